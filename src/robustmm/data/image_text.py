"""What MM-IMDb, UPMC Food-101 and Hateful Memes share: an image and a text per sample, read either from the
raw layout users download or from the Arrow files of the MAP protocol.

MAP's `make_arrow.py` writes one file per split, `<name>_<split>.arrow` (an Arrow IPC file), with the image as
encoded bytes in an `image` column, the texts as a list of strings (`plots` for MM-IMDb, `text` otherwise), the
label (a class index; a 23-way multi-hot list for MM-IMDb) and, except for Hateful Memes, the `image_id`.
MoRA's preprocessed copies use the same columns in `<split>.arrow`. Both names are read. The images stay in the
memory-mapped file until a sample is loaded.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterable, Literal

import pyarrow as pa
import pyarrow.compute as pc

from ..atomic import atomic_write
from ..checks import checked_value
from .base import DatasetError, MultimodalDataset, Record

Format = Literal["auto", "raw", "arrow"]
ARROW_BATCH_ROWS = 512
"""Rows per record batch when writing, so that a split's images never sit in memory all at once."""


@dataclass(frozen=True)
class ArrowCell:
    """The image of row `row` of the split's Arrow file, read when the sample is loaded."""

    row: int


@dataclass(frozen=True)
class Item:
    """One image-text entry of a layout before it becomes records (an MM-IMDb movie keeps all its plots)."""

    id: str
    label: Any
    image: Any
    texts: tuple[str, ...]
    origin: str


def open_arrow(path: Path) -> pa.Table:
    """A MAP/MoRA Arrow IPC file, memory-mapped: reading it copies nothing until values are used."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


class ImageTextDataset(MultimodalDataset):
    """Base of the image-text readers: `format` "raw", "arrow" or "auto" (the raw layout when its list files
    are in `root`, else the split's Arrow file)."""

    modalities = {"image": "image", "text": "text"}
    arrow_name: ClassVar[str] = ""
    """The prefix of MAP's file names (mmimdb, food101, hatememes)."""
    arrow_splits: ClassVar[dict[str, str]] = {"train": "train", "val": "val", "test": "test"}
    """Split -> the split name in MAP's file names."""
    text_column: ClassVar[str] = "text"
    raw_markers: ClassVar[tuple[str, ...]] = ()
    """Paths under `root` whose presence means the raw layout."""
    arrow_label_types: ClassVar[dict[str, pa.DataType]] = {"label": pa.int64()}
    """MAP's label column(s) and their types (see `label_to_arrow`)."""
    arrow_reader_options: ClassVar[dict[str, Any]] = {}
    """Options under which the records hold everything MAP's file stores (MM-IMDb: every plot)."""

    def __init__(self, root, split="train", *, format: Format = "auto", **options):
        self.format = checked_value(format, Format, "format")
        self._table: pa.Table | None = None
        super().__init__(root, split, **options)

    # -- to implement ------------------------------------------------------------------------------------------

    def raw_items(self) -> Iterable[Item]:
        """The items of `self.split` in the raw layout."""
        raise NotImplementedError

    def item_records(self, item: Item) -> Iterable[Record]:
        """One record per item with its first text; MM-IMDb overrides this for its plot modes."""
        text = item.texts[0] if item.texts else None
        yield Record(item.id, item.label, {"image": item.image, "text": text}, item.origin)

    def label_from_arrow(self, value):
        return value

    def label_to_arrow(self, label) -> dict[str, Any]:
        """MAP's label column(s) for a resolved label."""
        return {"label": label}

    # -- reading -----------------------------------------------------------------------------------------------

    def arrow_candidates(self) -> list[Path]:
        map_name = f"{self.arrow_name}_{self.arrow_splits[self.split]}.arrow"
        return [self.root / map_name, self.root / f"{self.split}.arrow"]

    def arrow_path(self) -> Path | None:
        return next((path for path in self.arrow_candidates() if path.is_file()), None)

    def uses_arrow(self) -> bool:
        if self.format != "auto":
            return self.format == "arrow"
        raw = any((self.root / marker).exists() for marker in self.raw_markers)
        return not raw and self.arrow_path() is not None

    def read_records(self):
        if self.uses_arrow():
            self.format = "arrow"
            items = self.arrow_items()
        else:
            self.format = "raw"
            items = self.raw_items()
        for item in items:
            yield from self.item_records(item)

    def table(self) -> pa.Table:
        if self._table is None:
            path = self.arrow_path()
            try:
                self._table = open_arrow(path)
            except (pa.ArrowException, OSError) as error:
                raise DatasetError(f"{self.where(path.name)}: not a readable Arrow IPC file: {error}") from error
        return self._table

    def arrow_items(self) -> Iterable[Item]:
        path = self.arrow_path()
        if path is None:
            names = " or ".join(p.name for p in self.arrow_candidates())
            raise FileNotFoundError(f"{self.where(str(self.root))}: no {names}")
        table = self.table()
        absent = [c for c in ("image", self.text_column, "label") if c not in table.column_names]
        if absent:
            raise DatasetError(
                f"{self.where(path.name)}: no column {', '.join(absent)} (columns: {', '.join(table.column_names)})"
            )
        try:
            has_image = [bool(size) for size in pc.binary_length(table.column("image")).to_pylist()]
        except pa.ArrowException as error:
            raise DatasetError(f"{self.where(path.name)}: the image column holds no image bytes: {error}") from error
        id_column = next((c for c in ("image_id", "id") if c in table.column_names), None)
        ids = table.column(id_column).to_pylist() if id_column else range(table.num_rows)
        texts = table.column(self.text_column).to_pylist()
        labels = table.column("label").to_pylist()
        for row, (sample_id, text, label) in enumerate(zip(ids, texts, labels)):
            origin = f"{path.name} row {row}"
            try:
                label = self.label_from_arrow(label)
            except DatasetError as problem:
                self.reject(origin, str(problem), str(sample_id))
                continue
            text = [text] if isinstance(text, str) else text if isinstance(text, list) else []
            text = [t for t in text if isinstance(t, str) and t.strip()]
            yield Item(str(sample_id), label, ArrowCell(row) if has_image[row] else None, tuple(text), origin)

    def resolve(self, modality: str, reference):
        if isinstance(reference, ArrowCell):
            return self.table().column(modality)[reference.row].as_py()
        return reference

    def __getstate__(self):
        """DataLoader workers reopen the memory map instead of receiving a copy of the table."""
        state = self.__dict__.copy()
        state["_table"] = None
        return state

    # -- writing -----------------------------------------------------------------------------------------------

    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [
                ("image", pa.binary()),
                (self.text_column, pa.list_(pa.string())),
                *self.arrow_label_types.items(),
                ("image_id", pa.string()),
                ("split", pa.string()),
            ]
        )

    def arrow_rows(self) -> Iterable[dict]:
        """MAP's rows for this split: records sharing a group (the plots of a movie) make one row."""
        groups: dict[str, list[Record]] = defaultdict(list)
        for record in self.records:
            groups[record.group or record.id].append(record)
        for key, members in groups.items():
            image = members[0].sources.get("image")
            image = None if image is None else self._read_bytes(members[0], image)
            texts = [m.sources["text"] for m in members if m.sources.get("text") is not None]
            label = list(members[0].label) if self.multilabel else members[0].label
            yield {
                "image": image,
                self.text_column: texts,
                **self.label_to_arrow(label),
                "image_id": key,
                "split": self.arrow_splits[self.split],
            }

    def _read_bytes(self, record: Record, image) -> bytes:
        if isinstance(image, ArrowCell):
            return self.resolve("image", image)
        try:
            return Path(image).read_bytes()
        except OSError as error:
            raise DatasetError(f"{self.where(record.origin, record.id)}: cannot read image {image}: {error}") from error

    def write_arrow(self, out_dir: str | Path) -> Path:
        """This split as MAP's `<name>_<split>.arrow` in `out_dir` (the bytes of each image file, unchanged)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self.arrow_name}_{self.arrow_splits[self.split]}.arrow"
        schema = self.arrow_schema()

        def write(temporary):
            with pa.OSFile(temporary, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                batch: list[dict] = []
                for row in self.arrow_rows():
                    batch.append(row)
                    if len(batch) == ARROW_BATCH_ROWS:
                        writer.write_batch(pa.RecordBatch.from_pylist(batch, schema))
                        batch = []
                if batch:
                    writer.write_batch(pa.RecordBatch.from_pylist(batch, schema))

        atomic_write(path, write)
        return path
