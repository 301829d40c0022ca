"""One base class for every dataset: records in, validated lazy samples out.

A concrete dataset only parses its on-disk layout into `Record`s (id, raw label, one raw reference per
modality: inline text, a file path, image bytes). The base class does everything else once, so that every
reader behaves the same:

- validation at construction: labels against the class list, referenced files exist, each sample has at least
  one modality, ids are unique, the split is not empty. Problems name the row and the file; with
  `on_error="skip"` the row is skipped instead and listed in `skipped`.
- lazy loading in `__getitem__` into the sample contract `{"id", "label", <modality>: value | None}`: text as
  `str`, images as RGB `PIL.Image`, audio as a 16 kHz float32 waveform (wav) or a `[frames, bins]` fbank (npy),
  video as a list of frames (`num_frames` random frames in training, uniformly spaced otherwise).
- real missingness: a modality whose reference is None (no file for this row, an empty text cell) is missing
  in the data itself; `with_protocol` adds simulated missingness on top and keeps the two apart.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import struct
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..checks import load_json
from ..processing import IMAGE_FILE_ERRORS, KINDS, MAX_PIXELS, media_file, not_a_regular_file, read_image
from .protocol import MissingProtocol, MissingTable

SPLIT_ALIASES = {"dev": "val", "valid": "val", "validation": "val"}
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
SAMPLE_RATE = 16_000
"""Audio is returned at the rate of the AST feature extractor."""
FILE_KINDS = ("image", "audio", "video")
READ_ERRORS = (*IMAGE_FILE_ERRORS, struct.error)
"""What reading a damaged file raises: Pillow's errors, and SciPy's `struct.error` for a truncated wav header."""
MAX_CELL_CHARS = 1 << 24
"""The longest CSV cell read (16 M characters): Python's csv module stops at 128 K, shorter than a long text."""
MAX_INDEXED_CLASSES = 100_000
"""More classes than this, inferred from index labels, means a column of ids or numbers, not of classes."""


class DatasetError(ValueError):
    """A problem with the data on disk; the message names the dataset, split, row and file."""


@dataclass(frozen=True)
class Record:
    """One sample before loading.

    `label`: a class index or name, or for multi-label data a list of them (or one '|'-separated string).
    `sources`: modality -> raw reference; None or absent means the data lacks that modality.
    `origin`: where the row came from ("train.jsonl line 12"), for error messages.
    `group`: samples sharing a group lose the same modalities under a protocol (MM-IMDb plots of one movie).
    """

    id: str
    label: Any
    sources: dict[str, Any]
    origin: str
    group: str | None = None


def allow_long_cells() -> None:
    """Let the csv module read cells of up to `MAX_CELL_CHARS` (a process-wide setting, only ever raised)."""
    if csv.field_size_limit() < MAX_CELL_CHARS:
        csv.field_size_limit(MAX_CELL_CHARS)


def natural_key(name: str) -> list:
    """'frame_10' after 'frame_9'."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def existing(path: Path) -> Path | None:
    """The path if the file or folder exists, else None: for layouts where an absent file means a really
    missing modality rather than a broken download."""
    return path if path.exists() else None


def hold_out(ids: Iterable[str], fraction: float, salt: str = "val") -> set[str]:
    """A deterministic, order-independent `fraction` of `ids`, for a validation split carved from training data
    where the dataset has none (the checkpoint must be chosen on validation, never on test)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{salt}\x00{i}".encode()).hexdigest())
    return set(ranked[: round(fraction * len(ranked))])


def split_off_validation(records: Iterable[Record], split: str, fraction: float) -> Iterable[Record]:
    """The records of `split` when the dataset lists only training data for both 'train' and 'val': 'val' is the
    `hold_out` fraction of the training list, 'train' the rest. Records sharing a group stay together."""

    def key(record) -> str:
        return getattr(record, "group", None) or record.id

    records = list(records)
    held = hold_out({key(record) for record in records}, fraction)
    return [record for record in records if (key(record) in held) == (split == "val")]


def classes_from_labels(labels: Iterable) -> tuple[str, ...]:
    """A class list for data that ships none: the sorted label names, or '0'..'N-1' when every label is an index
    (so that an index keeps its meaning). Multi-label values (lists or '|'-joined strings) count each label."""
    names = set()
    for label in labels:
        values = label.split("|") if isinstance(label, str) else label
        values = values if isinstance(values, (list, tuple)) else [values]
        names.update(str(value).strip() for value in values if str(value).strip())
    if names and all(name.isdecimal() for name in names):
        count = max(int(name) for name in names) + 1
        if count > MAX_INDEXED_CLASSES:
            raise DatasetError(
                f"the labels are indices up to {count - 1}, too many for classes; give the class list explicitly"
            )
        return tuple(str(index) for index in range(count))
    return tuple(sorted(names))


def load_image(reference, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image file or image bytes as RGB (`robustmm.processing.read_image`: regular files only, `max_pixels`)."""
    return read_image(reference, max_pixels)


def load_audio(reference) -> np.ndarray:
    """A `.wav` file (a path, or its bytes) as a mono float32 waveform at 16 kHz, or a `.npy` array as stored
    (fbank or waveform)."""
    if isinstance(reference, np.ndarray):
        return reference.astype(np.float32)
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    if isinstance(reference, (bytes, bytearray)):  # a .wav file's bytes, as `robustmm serve` receives them
        rate, samples = wavfile.read(io.BytesIO(reference))
    else:
        path = Path(reference)
        if path.suffix not in (".npy", ".wav"):
            raise ValueError(f"unsupported audio format {path.suffix!r}: use .wav or a precomputed fbank .npy")
        with media_file(path) as handle:
            if path.suffix == ".npy":
                return np.load(handle).astype(np.float32)
            rate, samples = wavfile.read(handle)
    if np.issubdtype(samples.dtype, np.integer):
        samples = samples / float(np.iinfo(samples.dtype).max)
    samples = np.asarray(samples, np.float32)
    if samples.ndim == 2:
        samples = samples.mean(1)
    if rate != SAMPLE_RATE:
        divisor = np.gcd(rate, SAMPLE_RATE)
        samples = resample_poly(samples, SAMPLE_RATE // divisor, rate // divisor).astype(np.float32)
    return samples


def frame_files(reference) -> list[Path]:
    if isinstance(reference, (list, tuple)):
        return [Path(p) for p in reference]
    frames = [p for p in Path(reference).iterdir() if p.suffix.lower() in FRAME_SUFFIXES]
    if not frames:
        raise ValueError(f"frame folder {reference} holds no {'/'.join(FRAME_SUFFIXES)} files")
    return sorted(frames, key=lambda p: natural_key(p.name))


def pick_frames(count: int, num_frames: int | None, randomly: bool) -> list[int]:
    """`num_frames` indices out of `count`: random and sorted in training, the centres of equal segments
    otherwise (the paper: 3 frames, random in training, uniform at test). None keeps every frame."""
    if num_frames is None:
        return list(range(count))
    if randomly and count >= num_frames:
        return sorted(torch.randperm(count)[:num_frames].tolist())
    return [((2 * i + 1) * count) // (2 * num_frames) for i in range(num_frames)]


class MultimodalDataset(Dataset):
    """Base of every reader; subclasses set the class attributes and implement `read_records`.

    Options common to all readers: `on_error` ("raise" or "skip" rows with problems), `num_frames` (video frames
    per sample; None for all), `verify` (decode every file at construction, so that corrupt files are found
    before training rather than in the middle of it; slow on large datasets) and `max_pixels` (images with more
    pixels are refused before decoding; `robustmm.processing.MAX_PIXELS`).
    """

    name: ClassVar[str] = ""
    """Set by `register_dataset`."""
    layout: ClassVar[str] = ""
    """One line: what the reader expects on disk."""
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    modalities: dict[str, str] = {}
    """Modality name -> kind (text / image / audio / video), in the order the missing type 'both' refers to."""
    class_names: tuple[str, ...] = ()
    multilabel: bool = False
    metrics: tuple[str, ...] = ("accuracy",)
    """The metrics this dataset is reported with (names of `robustmm.metrics`); the first selects the checkpoint."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        on_error: str = "raise",
        num_frames: int | None = 3,
        verify: bool = False,
        max_pixels: int = MAX_PIXELS,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.root = Path(root)
        self.split = self.canonical_split(split)
        self.on_error = on_error
        self.num_frames = num_frames
        self.verify = verify
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
        self.max_pixels = max_pixels
        self.skipped: list[tuple[str, str]] = []
        self.notes: list[str] = []
        """Known properties of the data worth reporting (e.g. genres outside the class list)."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.name or type(self).__name__}: dataset root {self.root} is not a folder")
        records = list(self.read_records())
        self._class_index = {name: index for index, name in enumerate(self.class_names)}
        unknown_kinds = {kind for kind in self.modalities.values() if kind not in KINDS}
        if unknown_kinds:
            raise ValueError(f"unknown modality kind(s) {', '.join(sorted(unknown_kinds))}; use {', '.join(KINDS)}")
        self.records = self._validated(records)

    # -- to implement ------------------------------------------------------------------------------------------

    def read_records(self) -> Iterable[Record]:
        """Parse the layout of `self.root` for `self.split`; call `self.reject(origin, reason)` on bad rows."""
        raise NotImplementedError

    def resolve(self, modality: str, reference):
        """Turn a stored reference into what the loaders read (a path, bytes, text); identity by default."""
        return reference

    # -- shared machinery --------------------------------------------------------------------------------------

    @classmethod
    def canonical_split(cls, split: str) -> str:
        split = SPLIT_ALIASES.get(split, split)
        if split not in cls.splits:
            raise ValueError(f"{cls.name or cls.__name__} has splits {', '.join(cls.splits)}; got {split!r}")
        return split

    def table_rows(self, path: Path) -> Iterable[tuple[str, dict]]:
        """(origin, row) for each row of a CSV file with a header or of a JSONL file; unparsable lines are
        rejected (see `reject`). The file is UTF-8, with or without a byte order mark (as Excel saves it); any other
        encoding is an error that names the first line that is not UTF-8."""
        allow_long_cells()
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                if path.suffix == ".csv":
                    reader = csv.DictReader(handle)
                    try:
                        for row in reader:
                            origin = f"{path.name} line {reader.line_num}"
                            if None in row or None in row.values():
                                given = sum(v is not None for k, v in row.items() if k is not None)
                                fields = given + len(row.get(None, ()))
                                self.reject(origin, f"has {fields} fields, the header has {len(reader.fieldnames)}")
                                continue
                            yield origin, row
                    except csv.Error as error:  # e.g. a cell over MAX_CELL_CHARS: the rest cannot be parsed
                        line = reader.line_num + 1  # the record that failed starts after the last one read
                        raise DatasetError(f"{self.where(f'{path.name} line {line}')}: {error}") from None
                    return
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        row = load_json(line)
                    except ValueError as error:
                        self.reject(f"{path.name} line {number}", f"not valid JSON: {error}")
                        continue
                    if not isinstance(row, dict):
                        self.reject(f"{path.name} line {number}", "expected a JSON object")
                        continue
                    yield f"{path.name} line {number}", row
        except UnicodeDecodeError:
            # The decoder's offset counts from the chunk it was reading, not from the start of the file: find the
            # line by decoding line by line (a newline byte is never part of a multi-byte UTF-8 character).
            with open(path, "rb") as raw:
                for number, line in enumerate(raw, 1):
                    try:
                        line.decode("utf-8")
                    except UnicodeDecodeError as error:
                        byte, before = line[error.start], line[: error.start].decode("utf-8")[-20:]
                        break
            raise DatasetError(
                f"{self.where(f'{path} line {number}')}: not UTF-8 (byte {byte:#x} after {before!r}); re-save the "
                "file as UTF-8, e.g. `iconv -f latin1 -t utf-8 OLD > NEW` or a spreadsheet's 'CSV UTF-8' format"
            ) from None

    def where(self, origin: str, sample_id: str | None = None) -> str:
        name = f" (id {sample_id!r})" if sample_id is not None else ""
        return f"{self.name or type(self).__name__} {self.split}: {origin}{name}"

    def reject(self, origin: str, reason: str, sample_id: str | None = None) -> None:
        """Raise for a bad row, or record it as skipped with `on_error='skip'`."""
        if self.on_error == "raise":
            raise DatasetError(f"{self.where(origin, sample_id)}: {reason}")
        self.skipped.append((origin, reason))

    def skip_summary(self) -> str:
        if not self.skipped:
            return "no rows skipped"
        reasons = Counter(reason.split(":")[0] for _, reason in self.skipped)
        origin, reason = self.skipped[0]
        listed = "; ".join(f"{count} x {reason}" for reason, count in reasons.most_common())
        return f"skipped {len(self.skipped)} rows ({listed}); first: {origin}: {reason}"

    def read_json(self, path: Path, expected: type = dict):
        """A JSON file of the layout, which must hold an object (or `expected`); anything else names the file."""
        try:
            value = load_json(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise DatasetError(f"{self.where(path.name)}: not valid JSON: {error}") from error
        if not isinstance(value, expected):
            wanted = {dict: "an object", list: "a list"}.get(expected, expected.__name__)
            raise DatasetError(f"{self.where(path.name)}: expected {wanted}, got {type(value).__name__}")
        return value

    def _validated(self, records: list[Record]) -> list[Record]:
        kept, seen = [], {}
        for record in records:
            try:
                record = self._checked(record)
                if record.id in seen:
                    raise DatasetError(f"duplicate id, first seen at {seen[record.id]}")
            except (DatasetError, ValueError, OSError) as problem:
                self.reject(record.origin, str(problem), record.id)
                continue
            seen[record.id] = record.origin
            kept.append(record)
        if not kept:
            detail = f"; {self.skip_summary()}" if self.skipped else ""
            raise DatasetError(f"{self.where(str(self.root))}: the split is empty{detail}")
        for column, modality in enumerate(self.modalities):
            if not any(record.sources.get(modality) is not None for record in kept):
                raise DatasetError(
                    f"{self.where(str(self.root))}: no sample has a {modality!r}; check the layout "
                    f"({self.layout}) or leave {modality!r} out of the modalities"
                )
        return kept

    def _checked(self, record: Record) -> Record:
        sources = {}
        for modality, kind in self.modalities.items():
            reference = record.sources.get(modality)
            if kind == "text" and isinstance(reference, str) and not reference.strip():
                reference = None
            if kind in FILE_KINDS and isinstance(reference, (str, Path)):
                reference = Path(reference)
                if not reference.exists():
                    broken = " (a link that leads nowhere, or in a loop)" if reference.is_symlink() else ""
                    raise DatasetError(f"{kind} file {reference} does not exist{broken}")
                found = not_a_regular_file(reference.stat().st_mode)
                if kind == "video" and found != "a folder":
                    raise DatasetError(f"video {reference} is not a folder of frames")
                if kind != "video" and found:
                    raise DatasetError(f"{kind} file {reference} is {found}, not a regular file")
            sources[modality] = reference
        if all(reference is None for reference in sources.values()):
            raise DatasetError(f"has no modality: expected at least one of {', '.join(self.modalities)}")
        record = replace(record, id=str(record.id), label=self.resolve_label(record.label), sources=sources)
        if self.verify:
            self.load_record(record)
        return record

    def resolve_label(self, raw):
        """A class index, or for multi-label data a sorted tuple of indices, from indices or class names."""
        if self.multilabel:
            values = raw.split("|") if isinstance(raw, str) else raw
            if not isinstance(values, (list, tuple)):
                raise DatasetError(f"multi-label data needs a list of labels, got {raw!r}")
            return tuple(sorted({self._label_index(value) for value in values if str(value).strip() != ""}))
        return self._label_index(raw)

    def _label_index(self, value) -> int:
        if isinstance(value, str):
            value = value.strip()
            if value in self._class_index:
                return self._class_index[value]
            if not value.lstrip("-").isdecimal():
                raise DatasetError(f"label {value!r} is not one of the {len(self.class_names)} classes")
        elif isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DatasetError(f"label {value!r} is neither a class index nor a class name")
        index = int(value)
        if not 0 <= index < len(self.class_names):
            raise DatasetError(f"label index {index} is outside 0..{len(self.class_names) - 1}")
        return index

    # -- loading -----------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.load(index)

    def load(self, index: int, drop: Iterable[str] = ()) -> dict:
        """Sample `index`; modalities in `drop` come back as None without being read."""
        return self.load_record(self.records[index], set(drop))

    def load_record(self, record: Record, drop: set[str] = frozenset()) -> dict:
        sample = {"id": record.id, "label": list(record.label) if self.multilabel else record.label}
        for modality, kind in self.modalities.items():
            reference = record.sources.get(modality)
            sample[modality] = None if reference is None or modality in drop else self._read(
                record, modality, kind, reference
            )
        return sample

    def _read(self, record: Record, modality: str, kind: str, reference):
        readers = {"text": str, "image": self._load_image, "audio": load_audio, "video": self._load_video}
        try:
            return readers[kind](self.resolve(modality, reference))
        except READ_ERRORS as error:
            shown = reference if isinstance(reference, (str, Path)) else f"{modality} of row {record.origin}"
            raise DatasetError(f"{self.where(record.origin, record.id)}: cannot read {kind} {shown}: {error}") from error

    def _load_image(self, reference) -> Image.Image:
        return load_image(reference, self.max_pixels)

    def _load_video(self, reference) -> list[Image.Image]:
        frames = frame_files(reference)
        picks = pick_frames(len(frames), self.num_frames, randomly=self.split == "train")
        return [load_image(frames[i], self.max_pixels) for i in picks]

    # -- views -------------------------------------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        return [record.id for record in self.records]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def text_lengths(self) -> list[int]:
        """Characters of inline text per sample, read from the records (nothing is loaded): the cue of the
        trainer's `group_by_length`."""
        texts = [m for m, kind in self.modalities.items() if kind == "text"]
        return [sum(len(r.sources[m]) for m in texts if isinstance(r.sources.get(m), str)) for r in self.records]

    def present_table(self) -> np.ndarray:
        """`[n, modalities]` bools: which modalities each sample really has."""
        return np.array([[r.sources.get(m) is not None for m in self.modalities] for r in self.records], bool)

    def groups(self) -> list[str] | None:
        if all(record.group is None for record in self.records):
            return None
        return [record.group if record.group is not None else record.id for record in self.records]

    def with_protocol(self, protocol: MissingProtocol, split: str | None = None, cache_dir=None) -> "ProtocolView":
        """This split under `protocol`: the protocol's missing modalities come back as None."""
        return ProtocolView(self, protocol, split, cache_dir)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self)}, "
            f"modalities={list(self.modalities)}, classes={self.num_classes})"
        )


class ProtocolView(Dataset):
    """A dataset split with a missing protocol applied; reports real vs simulated missingness.

    The table is seeded by (protocol seed, split) and the sample ids, so the same protocol gives the same
    samples their missing modalities whatever the order or the other splits. A kind in the protocol's missing
    type means the dataset's one modality of that kind (`MissingProtocol.bound`).
    """

    def __init__(self, dataset: MultimodalDataset, protocol: MissingProtocol, split: str | None = None, cache_dir=None):
        self.dataset = dataset
        self.protocol = protocol = protocol.bound(dataset.modalities)
        self.table: MissingTable = protocol.missing_table(
            split or dataset.split,
            dataset.ids,
            list(dataset.modalities),
            dataset.present_table(),
            groups=dataset.groups(),
            cache_dir=cache_dir,
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return self.dataset.load(index, drop=self.table.dropped_modalities(index))

    @property
    def modalities(self) -> dict[str, str]:
        return self.dataset.modalities

    def text_lengths(self) -> list[int]:
        return self.dataset.text_lengths()

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.dataset.class_names

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def multilabel(self) -> bool:
        return self.dataset.multilabel

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.dataset.metrics

    @property
    def split(self) -> str:
        return self.table.split

    def summary(self) -> dict:
        """Sample counts per availability pattern (real vs simulated), per-modality counts, skipped rows."""
        return {**self.table.summary(), "skipped": len(self.dataset.skipped), "protocol": self.protocol.hash()}

