"""From samples (plain dicts) to batches: one `transformers` processor per modality and an explicit availability mask.

A sample is `{"id": ..., "label": int | list[int], <modality>: value | None}`; `None` or an absent key means the
modality is missing. The batch keeps, for each modality, processed inputs for the samples that HAVE it only, so
that an encoder never runs on a sample that lacks its modality. Methods that do need an input in place of a
missing modality use `Collator.placeholder(modality)`, one processed placeholder shared by the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

KINDS = ("text", "image", "audio", "video")


def _sample_name(index: int, sample: dict) -> str:
    return f"sample {index}" + (f" (id {sample['id']!r})" if "id" in sample else "")


def _as_image(value, where: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (str, Path)):
        try:
            with Image.open(value) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as error:
            raise ValueError(f"{where}: cannot read image file {str(value)!r}: {error}") from error
    if isinstance(value, np.ndarray) and value.ndim in (2, 3):
        return Image.fromarray(value).convert("RGB")
    raise ValueError(f"{where}: expected a PIL image, an image path or an HxW(xC) array, got {type(value).__name__}")


class TextProcessor:
    """Tokenizes with the encoder's own tokenizer; the placeholder for a missing text is the empty string."""

    kind = "text"

    def __init__(self, name_or_path: str, max_length: int | None = None):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        self.max_length = max_length or min(self.tokenizer.model_max_length, 512)

    def placeholder(self) -> str:
        return ""

    def __call__(self, values: list, where: list[str]) -> dict[str, torch.Tensor]:
        for value, name in zip(values, where):
            if not isinstance(value, str):
                raise ValueError(f"{name}: text must be a str, got {type(value).__name__}")
        encoded = self.tokenizer(
            values, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: encoded[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded}


class ImageProcessor:
    """Resizes and normalizes with the encoder's image processor; the placeholder is a constant black image."""

    kind = "image"

    def __init__(self, name_or_path: str):
        from transformers import AutoImageProcessor

        self.processor = AutoImageProcessor.from_pretrained(name_or_path)

    def placeholder(self) -> Image.Image:
        return Image.new("RGB", (224, 224))

    def __call__(self, values: list, where: list[str]) -> dict[str, torch.Tensor]:
        images = [_as_image(value, name) for value, name in zip(values, where)]
        return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}


class AudioProcessor:
    """Log-mel features with the encoder's feature extractor (AST: 128 bins, 1024 frames, 16 kHz by default).

    Accepts a 1-D waveform at the extractor's sampling rate, or a precomputed 2-D fbank `[frames, bins]` (the
    layout of the audio-visual benchmarks), which is padded or cut to the extractor's length and normalized with
    its mean and std exactly like a waveform's fbank. The placeholder is one second of silence.
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

    def __call__(self, values: list, where: list[str]) -> dict[str, torch.Tensor]:
        bins = getattr(self.extractor, "num_mel_bins", None)
        rows = []
        for value, name in zip(values, where):
            array = np.asarray(value, dtype=np.float32)
            if array.ndim == 1:
                if not np.isfinite(array).all():
                    raise ValueError(f"{name}: audio waveform contains NaN or inf")
                rows.append(
                    self.extractor(array, sampling_rate=self.extractor.sampling_rate, return_tensors="pt")[
                        "input_values"
                    ][0]
                )
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
    deterministic, as at test time in the paper. The placeholder is `num_frames` black frames.
    """

    kind = "video"

    def __init__(self, name_or_path: str, num_frames: int = 3):
        self.images = ImageProcessor(name_or_path)
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


def encode_labels(labels: list, num_classes: int, multilabel: bool, where: list[str]) -> torch.Tensor:
    """Class indices for single-label tasks; multi-hot float rows for multi-label ones (labels as index lists)."""
    if multilabel:
        target = torch.zeros(len(labels), num_classes)
        for row, (label, name) in enumerate(zip(labels, where)):
            indices = [label] if isinstance(label, int) else list(label)
            for index in indices:
                if not 0 <= int(index) < num_classes:
                    raise ValueError(f"{name}: label {index} is outside 0..{num_classes - 1}")
                target[row, int(index)] = 1.0
        return target
    for label, name in zip(labels, where):
        if not isinstance(label, (int, np.integer)) or not 0 <= label < num_classes:
            raise ValueError(f"{name}: label {label!r} is not a class index in 0..{num_classes - 1}")
    return torch.tensor([int(label) for label in labels], dtype=torch.long)


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

    def __call__(self, samples: list[dict]) -> Batch:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        where = [_sample_name(i, s) for i, s in enumerate(samples)]
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
        if all("label" in s and s["label"] is not None for s in samples):
            labels = encode_labels([s["label"] for s in samples], self.num_classes, self.multilabel, where)
        return Batch(present=present, inputs=inputs, labels=labels, ids=[s.get("id", i) for i, s in enumerate(samples)])
