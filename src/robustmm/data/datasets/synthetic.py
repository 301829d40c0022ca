"""The demo's generated benchmark (`robustmm.data.synthetic`) as a dataset that a run config or a sweep can name.

The splits are rendered once, deterministically, into the generic layout (`generic.py`: a JSONL file per split,
images as PNG, audio as float32 `.npy` waveforms, text inline) in a folder under `root` named by a digest of
EVERY setting (the generator's, the modalities, the split sizes, the validation patterns and the layout's
format), and read from there: a changed setting renders a new folder, never reuses a stale one. PNG and `.npy`
are lossless, so a model reads exactly the samples that `SyntheticBenchmark.sample` renders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Literal

import numpy as np

from ...checks import checked_value
from ..synthetic import MODALITIES, SyntheticBenchmark, SyntheticConfig
from ..registry import register_dataset
from .generic import MANIFEST, Generic

FORMAT = 1
"""Part of the folder's digest: bump it when the rendered layout changes, so old folders are never reused."""
ValPatterns = Literal["mixed", "complete"]
GENERATOR_SETTINGS = tuple(f.name for f in fields(SyntheticConfig))


def mixed_availability(index: int, scenarios: list[dict]) -> list[str]:
    """The modalities validation sample `index` keeps under `val_patterns: mixed`: the benchmark's availability
    scenarios in turn, so that each is (nearly) equally common and model selection weighs them alike."""
    return scenarios[index % len(scenarios)]["available"]


@register_dataset("synthetic")
class Synthetic(Generic):
    """The generated benchmark of `robustmm demo`: image, text and audio whose Bayes-optimal accuracy is known.

    Options: `modalities` (a list or comma-joined names among image, text, audio; default image, text),
    `train_size`, `val_size`, `test_size` (defaults: the demo's 1200, 300, 1000), `val_patterns` ("mixed": the
    validation samples cycle through every availability scenario, as the demo selects its model, the missing
    modalities really absent; "complete"), and any field of `SyntheticConfig` (`seed`, `num_classes`,
    `atypical`, ...). `root` is the folder that holds the rendered copies (one subfolder per setting).
    """

    layout = "root/synthetic-<digest of every setting>/: rendered on first use in the generic layout"

    def __init__(self, root, split="train", *, modalities=("image", "text"), train_size: int = 1200,
                 val_size: int = 300, test_size: int = 1000, val_patterns: ValPatterns = "mixed", **options):
        generator = {name: options.pop(name) for name in GENERATOR_SETTINGS if name in options}
        names = [m.strip() for m in modalities.split(",")] if isinstance(modalities, str) else list(modalities)
        sizes = {"train": train_size, "val": val_size, "test": test_size}
        for name, size in sizes.items():
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"synthetic: {name}_size must be a positive integer, got {size!r}")
        checked_value(val_patterns, ValPatterns, "synthetic: val_patterns")
        benchmark = SyntheticBenchmark(SyntheticConfig(**generator), modalities=tuple(names))
        Path(root).mkdir(parents=True, exist_ok=True)
        folder = rendered(Path(root), benchmark, sizes, val_patterns)
        super().__init__(folder, split, **options)


def settings_digest(benchmark: SyntheticBenchmark, sizes: dict[str, int], val_patterns: str) -> str:
    settings = {"format": FORMAT, "generator": asdict(benchmark.config), "modalities": list(benchmark.modalities),
                "sizes": sizes, "val_patterns": val_patterns}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def rendered(root: Path, benchmark: SyntheticBenchmark, sizes: dict[str, int], val_patterns: str) -> Path:
    """The folder of these settings under `root`, rendered first if it is not there. It is rendered beside its
    final place and renamed into it, so that a reader never sees half a folder and processes rendering it at the
    same time leave one copy."""
    folder = root / f"synthetic-{settings_digest(benchmark, sizes, val_patterns)}"
    if (folder / MANIFEST).is_file():
        return folder
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
    try:
        render_into(scratch, benchmark, sizes, val_patterns)
        try:
            os.rename(scratch, folder)
        except OSError:
            if not (folder / MANIFEST).is_file():  # not another process's copy in its place: a real error
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder


def render_into(folder: Path, benchmark: SyntheticBenchmark, sizes: dict[str, int], val_patterns: str) -> None:
    scenarios = benchmark.scenarios()
    for modality in ("image", "audio"):
        if modality in benchmark.modalities:
            (folder / modality).mkdir()
    for split, size in sizes.items():
        rows = []
        for index, sample in enumerate(benchmark.sample(size, split)):
            keeps = mixed_availability(index, scenarios) if split == "val" and val_patterns == "mixed" else MODALITIES
            row = {"id": sample["id"], "label": benchmark.class_names[sample["label"]]}
            for modality in benchmark.modalities:
                row[modality] = stored(folder, modality, sample) if modality in keeps else None
            rows.append(json.dumps(row))
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    manifest = {"modalities": {m: m for m in benchmark.modalities}, "classes": list(benchmark.class_names)}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")  # last: marks it complete


def stored(folder: Path, modality: str, sample: dict) -> str:
    """The row's cell for one modality: the text itself, else the file written for it (relative to `folder`)."""
    value = sample[modality]
    if modality == "text":
        return value
    if modality == "image":
        path = f"image/{sample['id']}.png"
        value.save(folder / path, format="PNG")
    else:
        path = f"audio/{sample['id']}.npy"
        np.save(folder / path, np.asarray(value, dtype=np.float32))
    return path
