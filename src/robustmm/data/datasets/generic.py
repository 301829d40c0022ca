"""A user's own data: one CSV or JSONL file per split, one column per modality, any number of modalities."""

from __future__ import annotations

import csv
from pathlib import Path

from ...checks import load_json
from ..base import KINDS, DatasetError, MultimodalDataset, Record, allow_long_cells, classes_from_labels
from ..registry import register_dataset

MANIFEST = "dataset.json"
MANIFEST_KEYS = ("modalities", "classes", "multilabel", "metrics")
CLASS_FILE = "classes.txt"
SPLIT_FILE_NAMES = {"train": ("train",), "val": ("val", "dev", "valid", "validation"), "test": ("test",)}
TABLE_SUFFIXES = (".csv", ".jsonl")


def parse_modalities(spec) -> dict[str, str]:
    """Modality name -> kind, from a mapping or from a string such as "photo:image,caption:text"."""
    if isinstance(spec, str):
        pairs = [part.split(":", 1) for part in spec.split(",") if part.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(
                f"modalities {spec!r}: write name:kind pairs joined by commas, e.g. photo:image,caption:text"
            )
        spec = {name.strip(): kind.strip() for name, kind in pairs}
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"modalities must map column names to kinds ({', '.join(KINDS)}), got {spec!r}")
    unknown = {kind for kind in spec.values() if kind not in KINDS}
    if unknown:
        raise ValueError(f"unknown modality kind(s) {', '.join(sorted(map(str, unknown)))}; use {', '.join(KINDS)}")
    reserved = {"id", "label"} & set(spec)
    if reserved:
        raise ValueError(f"{', '.join(sorted(reserved))} cannot be a modality name: the column is reserved")
    return dict(spec)


def is_multilabel_value(label) -> bool:
    return isinstance(label, list) or (isinstance(label, str) and (label.lstrip().startswith("[") or "|" in label))


def split_table(root: Path, split: str) -> Path | None:
    """The one CSV or JSONL file of `split`; two candidates are an error, since either could be meant."""
    found = [root / f"{name}{suffix}" for name in SPLIT_FILE_NAMES[split] for suffix in TABLE_SUFFIXES]
    found = [path for path in found if path.is_file()]
    if len(found) > 1:
        raise DatasetError(f"generic {split}: found {' and '.join(p.name for p in found)} in {root}; keep one")
    return found[0] if found else None


def peek_labels(path: Path) -> list:
    """The label cells of a split file, leaving malformed rows to the reader of that split to report."""
    allow_long_cells()
    with open(path, newline="", encoding="utf-8-sig") as handle:
        if path.suffix == ".csv":
            try:
                return [row.get("label") for row in csv.DictReader(handle)]
            except csv.Error:
                return []  # the reader of that split reports the row
        labels = []
        for line in handle:
            try:
                row = load_json(line) if line.strip() else None
            except ValueError:
                continue
            if isinstance(row, dict):
                labels.append(row.get("label"))
        return labels


@register_dataset("generic")
class Generic(MultimodalDataset):
    """Your own data in a plain layout; each split is `root/<split>.csv` or `root/<split>.jsonl`.

    Columns: one per modality (text inline; image, audio and video as paths relative to `root` or absolute: an
    image file, a `.wav` or fbank `.npy`, a folder of frames), `label` (a class name or index; for multi-label
    data a '|'-joined string or a JSON list) and an optional `id` (else the row number). An empty cell is a
    really missing modality. The validation split may also be named dev/valid/validation.

    Options (each overrides `root/dataset.json`, `{"modalities": ..., "classes": [...], "multilabel": bool,
    "metrics": [...]}`): `modalities` ({"photo": "image", "caption": "text"} or "photo:image,caption:text", in
    the order the missing type 'both' refers to), `classes` (else the manifest, `classes.txt` one per line, or
    the sorted labels of the train split, '0'..'N-1' when they are all indices), `multilabel` (else detected
    from the train labels: a list or a '|' makes the data multi-label). Metrics default to accuracy, or F1 macro
    and micro for multi-label data.
    """

    layout = (
        "root/{train,val,test}.csv or .jsonl: a column per modality (text inline, files as paths), 'label', "
        "optional 'id'; modalities from the options or root/dataset.json"
    )

    def __init__(self, root, split="train", *, modalities=None, classes=None, multilabel=None, **options):
        self._given = {"modalities": modalities, "classes": classes, "multilabel": multilabel}
        super().__init__(root, split, **options)

    def _manifest(self) -> dict:
        path = self.root / MANIFEST
        if not path.is_file():
            return {}
        manifest = self.read_json(path)
        unknown = set(manifest) - set(MANIFEST_KEYS)
        if unknown:
            listed = ", ".join(sorted(unknown))
            raise DatasetError(f"{self.where(MANIFEST)}: unknown key(s) {listed}; known: {', '.join(MANIFEST_KEYS)}")
        for key, kind in (("metrics", list), ("multilabel", bool)):
            if manifest.get(key) is not None and not isinstance(manifest[key], kind):
                shown = "true or false" if kind is bool else "a list"
                raise DatasetError(f"{self.where(MANIFEST)}: {key} must be {shown}, got {manifest[key]!r}")
        return manifest

    def _configure(self, manifest: dict, rows: list[tuple[str, dict]]) -> None:
        """Modalities, multi-label flag, classes and metrics from the options, the manifest or the train split."""
        spec = self._given["modalities"] or manifest.get("modalities")
        if spec is None:
            raise DatasetError(
                f"{self.where(str(self.root))}: say which columns are modalities: the modalities option "
                f'(e.g. "photo:image,caption:text") or "modalities" in {MANIFEST}'
            )
        self.modalities = parse_modalities(spec)
        train_file = split_table(self.root, "train")
        if self.split == "train":
            train_labels = [row.get("label") for _, row in rows]
        else:
            train_labels = peek_labels(train_file) if train_file else None
        multilabel = next((v for v in (self._given["multilabel"], manifest.get("multilabel")) if v is not None), None)
        if multilabel is None:
            multilabel = any(is_multilabel_value(label) for label in train_labels or [])
        self.multilabel = bool(multilabel)
        classes = self._given["classes"] or manifest.get("classes")
        if classes is None and (self.root / CLASS_FILE).is_file():
            classes = [line.strip() for line in (self.root / CLASS_FILE).read_text(encoding="utf-8").splitlines()]
            classes = [name for name in classes if name]
        if classes is None:
            if train_labels is None:
                raise DatasetError(
                    f"{self.where(str(self.root))}: no class list: give classes in {MANIFEST} or {CLASS_FILE}, "
                    "or a train split to read them from"
                )
            try:
                classes = classes_from_labels(self._parsed_labels(train_labels))
            except DatasetError as error:
                raise DatasetError(f"{self.where(str(self.root))}: {error}") from error
        if not isinstance(classes, (list, tuple)):
            raise DatasetError(f"{self.where(str(self.root))}: classes must be a list of names, got {classes!r}")
        if len(set(map(str, classes))) != len(classes):
            raise DatasetError(f"{self.where(str(self.root))}: the class list repeats a name")
        self.class_names = tuple(str(name) for name in classes)
        metrics = manifest.get("metrics")
        if metrics is not None:
            from ...metrics import METRICS

            unknown = set(metrics) - set(METRICS)
            if unknown:
                raise DatasetError(
                    f"{self.where(MANIFEST)}: unknown metric(s) {sorted(unknown)}; known: {sorted(METRICS)}"
                )
            self.metrics = tuple(metrics)
        else:
            self.metrics = ("f1_macro", "f1_micro") if self.multilabel else ("accuracy",)

    def _parsed_labels(self, labels: list) -> list:
        """The train labels a class list is read from; a malformed one is left to the row that holds it."""
        parsed = []
        for label in labels:
            try:
                parsed.append(self._label_value(label))
            except DatasetError:
                continue
        return [label for label in parsed if label not in (None, "")]

    def _label_value(self, label):
        """A CSV cell holding a JSON list becomes the list; everything else is left to the base class."""
        if isinstance(label, str) and label.lstrip().startswith("["):
            try:
                return load_json(label)
            except ValueError as error:
                raise DatasetError(f"label {label!r} starts like a JSON list but is not one: {error}") from error
        return label

    def _reference(self, kind: str, value):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        if not isinstance(value, str):
            raise DatasetError(f"expected {'text' if kind == 'text' else 'a path'} in a {kind} column, got {value!r}")
        return value if kind == "text" else self.root / value.strip()

    def read_records(self):
        manifest = self._manifest()
        path = split_table(self.root, self.split)
        if path is None:
            names = ", ".join(f"{n}{s}" for n in SPLIT_FILE_NAMES[self.split] for s in TABLE_SUFFIXES)
            raise FileNotFoundError(f"{self.where(str(self.root))}: no split file (looked for {names})")
        rows = list(self.table_rows(path))
        self._configure(manifest, rows)
        if path.suffix == ".csv" and rows:
            absent = [column for column in ("label", *self.modalities) if column not in rows[0][1]]
            if absent:
                raise DatasetError(f"{self.where(path.name)}: no column {', '.join(map(repr, absent))} in the header")
        for number, (origin, row) in enumerate(rows):
            sample_id = row.get("id")
            sample_id = str(number) if sample_id in (None, "") else str(sample_id)
            try:
                label = row.get("label")
                if label is None or (isinstance(label, str) and not label.strip()):
                    raise DatasetError("has no label")
                sources = {name: self._reference(kind, row.get(name)) for name, kind in self.modalities.items()}
                yield Record(sample_id, self._label_value(label), sources, origin)
            except DatasetError as problem:
                self.reject(origin, str(problem), sample_id)
