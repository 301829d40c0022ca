"""From samples (plain dicts) to batches: one `transformers` processor per modality and an explicit availability mask.

A sample is `{"id": ..., "label": int | list[int], <modality>: value | None}`; `None` or an absent key means the
modality is missing. The batch keeps, for each modality, processed inputs for the samples that HAVE it only, so
that an encoder never runs on a sample that lacks its modality. Methods that do need an input in place of a
missing modality use `Collator.placeholder(modality)`, one processed placeholder shared by the whole batch.
"""

from __future__ import annotations

import contextlib
import io
import operator
import os
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

KINDS = ("text", "image", "audio", "video")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
IMAGE_FILE_ERRORS = (OSError, ValueError, EOFError, SyntaxError, Image.DecompressionBombError)
"""What Pillow raises for unreadable, truncated or oversized files (a broken PNG chunk is a SyntaxError)."""
FBANK_WINDOW_SECONDS, FBANK_HOP_SECONDS = 0.025, 0.010
"""Window and hop of the Kaldi-style fbank that AST's feature extractor computes (400 and 160 samples at 16 kHz)."""


MAX_MEDIA_BYTES = 1 << 30
"""A media file (image, sound, frame) larger than this (1 GiB) is refused rather than read."""
MAX_PIXELS = 64_000_000
"""Default `max_pixels`: images with more pixels are refused before they are decoded. A few hundred bytes of PNG
can declare 12000 x 12000 pixels, which take seconds of decoding per image; Pillow's own bomb check starts at
89 M. 64 M pixels keeps every camera photo (8000 x 8000); raise it per encoder (`EncoderConfig.max_pixels`), per
dataset (the reader option `max_pixels`) or for `robustmm predict --max-pixels`."""
FILE_TYPES = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_a_regular_file(mode: int) -> str | None:
    """What a file of this `st_mode` is, if it is not a regular file (which only media are read from)."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in FILE_TYPES if test(mode)), "not a regular file")


@contextlib.contextmanager
def media_file(path):
    """`path` opened for reading as bytes, if it is a regular file (through links) of at most `MAX_MEDIA_BYTES`.
    It is opened without blocking and then checked, so that a named pipe or a device is refused instead of
    waiting forever for data, and a file swapped after a check cannot slip through."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        info = os.fstat(descriptor)
        kind = not_a_regular_file(info.st_mode)
        if kind:
            raise ValueError(f"{os.fspath(path)} is {kind}, not a regular file")
        if info.st_size > MAX_MEDIA_BYTES:
            raise ValueError(f"{os.fspath(path)} holds {info.st_size:,} bytes, more than the {MAX_MEDIA_BYTES:,} a "
                             "media file may")
        handle = os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise
    with handle:
        yield handle


class TooManyPixels(ValueError):
    """An image whose header declares more than `max_pixels` pixels: refused before it is decoded."""


def read_image(source, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An image file (a path to a regular file, `media_file`) or image bytes as 8-bit RGB. Its size is read from
    the header first: more than `max_pixels` pixels is an error, before anything is decoded."""
    with contextlib.ExitStack() as stack:
        if isinstance(source, (bytes, bytearray)):
            handle = io.BytesIO(source)
        else:
            handle = stack.enter_context(media_file(source))
        with warnings.catch_warnings():  # Pillow's warning of a large image: max_pixels decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = stack.enter_context(Image.open(handle))
        if image.width * image.height > max_pixels:
            raise TooManyPixels(
                f"{image.width}x{image.height} pixels, more than max_pixels ({max_pixels:,}); resize the image, or "
                "raise max_pixels if it is meant to be this large"
            )
        return to_rgb(image)


def _sample_name(index: int, sample) -> str:
    named = isinstance(sample, Mapping) and "id" in sample
    return f"sample {index}" + (f" (id {sample['id']!r})" if named else "")


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as 8-bit RGB. Pillow converts 16-bit greyscale (`I;16`: 16-bit PNGs) by clipping at 255, which
    turns nearly every pixel white, so such images are scaled to 8 bits first. Alpha is dropped (a transparent
    pixel keeps its stored colour), as `convert("RGB")` does."""
    if image.mode in SIXTEEN_BIT_MODES:
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    return image.convert("RGB")


def _as_image(value, where: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    if isinstance(value, (str, Path)):
        try:
            image = read_image(value, max_pixels)
        except IMAGE_FILE_ERRORS as error:
            raise ValueError(f"{where}: cannot read image file {str(value)!r}: {error}") from error
    elif isinstance(value, Image.Image):
        image = to_rgb(value)
    elif isinstance(value, np.ndarray) and value.ndim in (2, 3):
        if value.dtype.kind == "f":
            raise ValueError(f"{where}: a float pixel array is ambiguous (0..1 or 0..255?); pass uint8 pixels")
        try:
            image = to_rgb(Image.fromarray(value))
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{where}: cannot make an image of a {value.dtype} array of shape {value.shape}; pass uint8 pixels, "
                "HxW, HxWx3 or HxWx4"
            ) from error
    else:
        kind = type(value).__name__
        raise ValueError(f"{where}: expected a PIL image, an image path or an HxW(xC) array, got {kind}")
    if not image.width or not image.height:
        raise ValueError(f"{where}: the image is empty ({image.width}x{image.height} pixels)")
    return image


POSITIONS_FROM_PADDING = (
    "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer", "data2vec-text"
)
"""Families that number positions from `pad_token_id + 1`: that many of their position embeddings never hold a
token."""


def model_positions(name_or_path: str) -> int | None:
    """How many tokens the text model at `name_or_path` can take (None when its config sets no limit)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path)
    config = getattr(config, "text_config", None) or config
    positions = getattr(config, "max_position_embeddings", None)
    if positions and config.model_type in POSITIONS_FROM_PADDING:
        positions -= (config.pad_token_id or 0) + 1
    return positions


class TextProcessor:
    """Tokenizes with the encoder's own tokenizer; the placeholder for a missing text is the empty string.

    Longer texts are truncated to `max_length` tokens: by default the least of 512, the tokenizer's limit and the
    model's positions (a tokenizer often allows more than a small model has); never more than the model's
    positions, beyond which it would fail on a long text. A present empty string is encoded as it is, as the
    empty text that stands in for a missing one; only None marks a text as missing.
    """

    kind = "text"

    def __init__(self, name_or_path: str, max_length: int | None = None):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        positions = model_positions(name_or_path)
        if max_length is not None and positions is not None and max_length > positions:
            raise ValueError(f"{name_or_path}: max_length {max_length} is more than the {positions} tokens it takes")
        self.max_length = max_length or min(self.tokenizer.model_max_length, positions or 512, 512)

    def placeholder(self) -> str:
        return ""

    def __call__(self, values: list, where: list[str]) -> dict[str, torch.Tensor]:
        for value, name in zip(values, where):
            if not isinstance(value, str):
                raise ValueError(f"{name}: text must be a str, got {type(value).__name__}")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                reason = f"{error.reason} at character {error.start}"
                raise ValueError(f"{name}: text is not valid Unicode ({reason})") from None
        encoded = self.tokenizer(
            values, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}


class ImageProcessor:
    """Resizes and normalizes with the encoder's image processor; the placeholder is a constant black image."""

    kind = "image"

    def __init__(self, name_or_path: str, max_pixels: int = MAX_PIXELS):
        from transformers import AutoImageProcessor

        self.processor = AutoImageProcessor.from_pretrained(name_or_path)
        self.max_pixels = max_pixels

    def placeholder(self) -> Image.Image:
        return Image.new("RGB", (224, 224))

    def __call__(self, values: list, where: list[str]) -> dict[str, torch.Tensor]:
        images = [_as_image(value, name, self.max_pixels) for value, name in zip(values, where)]
        return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}


class AudioProcessor:
    """Log-mel features with the encoder's feature extractor (AST: 128 bins, 1024 frames, 16 kHz by default).

    Accepts a 1-D waveform at the extractor's sampling rate, or a precomputed 2-D fbank `[frames, bins]` (the
    layout of the audio-visual benchmarks), which is padded or cut to the extractor's length and normalized with
    its mean and std exactly like a waveform's fbank. The placeholder is one second of silence. Audio with no
    samples or frames, or with NaN or inf, is an error: None marks a missing audio.
    """

    kind = "audio"

    def __init__(self, name_or_path: str):
        from transformers import AutoFeatureExtractor

        self.extractor = AutoFeatureExtractor.from_pretrained(name_or_path)

    def placeholder(self) -> np.ndarray:
        return np.zeros(self.extractor.sampling_rate, dtype=np.float32)

    def _fbank(self, fbank: np.ndarray) -> torch.Tensor:
        extractor = self.extractor
        frames = np.zeros((extractor.max_length, fbank.shape[1]), dtype=np.float32)
        frames[: min(len(fbank), extractor.max_length)] = fbank[: extractor.max_length]
        if getattr(extractor, "do_normalize", False):
            frames = (frames - extractor.mean) / (extractor.std * 2)
        return torch.from_numpy(frames)

    def _waveform(self, array: np.ndarray) -> torch.Tensor:
        """Features of a finite, non-empty waveform. A recording longer than the extractor's window is first cut to
        the samples its kept frames read: the extractor would compute the fbank of the whole recording and then
        drop the extra frames, the same result at a cost that grows with the length. One shorter than a single
        fbank window is padded with silence, on which the extractor would otherwise fail."""
        extractor = self.extractor
        rate = extractor.sampling_rate
        window, hop = round(FBANK_WINDOW_SECONDS * rate), round(FBANK_HOP_SECONDS * rate)
        frames = getattr(extractor, "max_length", None)
        if frames:
            array = array[: (frames - 1) * hop + window]
        if len(array) < window:
            array = np.pad(array, (0, window - len(array)))
        return extractor(array, sampling_rate=rate, return_tensors="pt")["input_values"][0]

    def __call__(self, values: list, where: list[str]) -> dict[str, torch.Tensor]:
        bins = getattr(self.extractor, "num_mel_bins", None)
        rows = []
        for value, name in zip(values, where):
            try:
                array = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{name}: audio must be an array of numbers, got {type(value).__name__}") from error
            if array.ndim in (1, 2) and not len(array):
                unit = "samples" if array.ndim == 1 else "frames"
                raise ValueError(f"{name}: audio is empty (0 {unit}); None marks a missing audio")
            if array.ndim in (1, 2) and not np.isfinite(array).all():
                raise ValueError(f"{name}: audio {'waveform' if array.ndim == 1 else 'fbank'} contains NaN or inf")
            if array.ndim == 1:
                rows.append(self._waveform(array))
            elif array.ndim == 2 and (bins is None or array.shape[1] == bins):
                rows.append(self._fbank(array))
            else:
                raise ValueError(
                    f"{name}: audio must be a 1-D waveform or a [frames, {bins}] fbank, got shape {array.shape}"
                )
        return {"input_values": torch.stack(rows)}


class VideoProcessor:
    """A list of frames; `num_frames` are taken uniformly and processed like images, giving `[B, F, C, H, W]`.

    Random frame choice for training belongs to the dataset (it knows the split); here the choice is uniform and
    deterministic, as at test time in the paper. A clip with fewer frames repeats some; frames of any sizes are
    each resized like an image. The placeholder is `num_frames` black frames.
    """

    kind = "video"

    def __init__(self, name_or_path: str, num_frames: int = 3, max_pixels: int = MAX_PIXELS):
        self.images = ImageProcessor(name_or_path, max_pixels)
        self.num_frames = num_frames

    def placeholder(self) -> list[Image.Image]:
        return [self.images.placeholder()] * self.num_frames

    def __call__(self, values: list, where: list[str]) -> dict[str, torch.Tensor]:
        clips = []
        for frames, name in zip(values, where):
            if not isinstance(frames, (list, tuple)) or not frames:
                raise ValueError(f"{name}: video must be a non-empty list of frames")
            picks = np.linspace(0, len(frames) - 1, self.num_frames).round().astype(int)
            clips.append(self.images([frames[i] for i in picks], [name] * self.num_frames)["pixel_values"])
        return {"pixel_values": torch.stack(clips)}


PROCESSORS = {"text": TextProcessor, "image": ImageProcessor, "audio": AudioProcessor, "video": VideoProcessor}


@dataclass
class Batch:
    """Processed inputs of the samples that have each modality, the availability mask and the labels.

    `inputs[m]` holds rows for `present[m].nonzero()` only, in batch order.
    """

    present: dict[str, torch.Tensor]
    inputs: dict[str, dict[str, torch.Tensor]]
    labels: torch.Tensor | None = None
    ids: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(next(iter(self.present.values())))

    def to(self, device) -> "Batch":
        return Batch(
            present={m: p.to(device) for m, p in self.present.items()},
            inputs={m: {k: v.to(device) for k, v in x.items()} for m, x in self.inputs.items()},
            labels=None if self.labels is None else self.labels.to(device),
            ids=self.ids,
        )


def class_index(value, num_classes: int, name: str) -> int:
    """`value` as a class index: an int (Python, NumPy or a 0-d integer tensor) in 0..num_classes-1. A bool or a
    float is refused rather than cast: True or 2.0 as a class usually means a column read with the wrong type."""
    try:
        index = operator.index(value)
    except TypeError:
        index = None
    if index is None or isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"{name}: label {value!r} is a {type(value).__name__}, not a class index in 0..{num_classes - 1}"
        )
    if not 0 <= index < num_classes:
        raise ValueError(f"{name}: label {index} is outside 0..{num_classes - 1}")
    return index


def encode_labels(labels: list, num_classes: int, multilabel: bool, where: list[str]) -> torch.Tensor:
    """Class indices for single-label tasks; multi-hot float rows for multi-label ones (labels as index lists)."""
    if multilabel:
        target = torch.zeros(len(labels), num_classes)
        for row, (label, name) in enumerate(zip(labels, where)):
            if isinstance(label, (str, bytes, Mapping)) or not np.iterable(label):
                label = [label]  # one index, or a value that class_index reports
            for index in label:
                target[row, class_index(index, num_classes, name)] = 1.0
        return target
    return torch.tensor([class_index(label, num_classes, name) for label, name in zip(labels, where)], dtype=torch.long)


SAMPLE_KEYS = ("id", "label")
"""Keys of a sample besides its modalities."""


def lookalike(name, kinds: dict[str, str]) -> str | None:
    """The modality (of `kinds`: modality -> kind) that a key which is not one looks meant for: a close spelling
    (`phtoo`, `Photo`, `imgae`) or the kind of exactly one modality (`image` for `photo`); else None. Other keys
    pass: samples and tables may carry columns of their own."""
    if not isinstance(name, str) or name in kinds or name in SAMPLE_KEYS:
        return None
    import difflib

    lowered = {m.lower(): m for m in kinds}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.8)
    if close:
        return lowered[close[0]]
    of_kind = [m for m, kind in kinds.items() if kind == name.lower()]
    return of_kind[0] if len(of_kind) == 1 else None


class Collator:
    """Turns a list of samples into a `Batch`. Picklable, holds no weights: use it as a DataLoader `collate_fn`."""

    def __init__(self, processors: dict, num_classes: int, multilabel: bool = False):
        self.processors = processors
        self.num_classes = num_classes
        self.multilabel = multilabel

    @property
    def modalities(self) -> list[str]:
        return list(self.processors)

    @property
    def text_modalities(self) -> list[str]:
        return [m for m, processor in self.processors.items() if processor.kind == "text"]

    def placeholder(self, modality: str) -> dict[str, torch.Tensor]:
        """The processed placeholder of `modality`, as a batch of one."""
        processor = self.processors[modality]
        return processor([processor.placeholder()], [f"{modality} placeholder"])

    def __call__(self, samples: list[dict], first_index: int = 0) -> Batch:
        """`first_index`: the position of `samples[0]` in the caller's list, so that errors name the right one."""
        if isinstance(samples, Mapping) or not isinstance(samples, (list, tuple)):
            raise ValueError(f"expected a list of samples (dicts), got a {type(samples).__name__}")
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        where = [_sample_name(first_index + i, s) for i, s in enumerate(samples)]
        kinds = {m: processor.kind for m, processor in self.processors.items()}
        for name, sample in zip(where, samples):
            if not isinstance(sample, Mapping):
                raise ValueError(f"{name}: a sample is a dict of modality values, got a {type(sample).__name__}")
            for key in sample:
                meant = lookalike(key, kinds)
                if meant is not None:
                    raise ValueError(
                        f"{name}: {key!r} is not a modality of this model ({', '.join(kinds)}); did you mean "
                        f"{meant!r}? (keys other than the modalities, id and label are ignored)"
                    )
        present = {m: torch.tensor([s.get(m) is not None for s in samples]) for m in self.processors}
        available = torch.stack(list(present.values())).any(0)
        if not available.all():
            first = int((~available).nonzero()[0])
            raise ValueError(
                f"{where[first]} has no modality at all: expected at least one of {', '.join(self.processors)}"
            )
        inputs = {}
        for modality, processor in self.processors.items():
            rows = present[modality].nonzero().flatten().tolist()
            if rows:
                inputs[modality] = processor([samples[i][modality] for i in rows], [where[i] for i in rows])
        labels = None
        labelled = [s.get("label") is not None for s in samples]
        if any(labelled) and not all(labelled):
            raise ValueError(f"{where[labelled.index(False)]} has no label while others have one: label all or none")
        if all(labelled):
            labels = encode_labels([s["label"] for s in samples], self.num_classes, self.multilabel, where)
        return Batch(present=present, inputs=inputs, labels=labels, ids=[s.get("id", i) for i, s in enumerate(samples)])
