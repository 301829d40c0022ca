"""`robustmm bench`: the cost of CMPT, measured side by side in one run on tiny encoders of equal size.

- `train_step_ratio_cmpt_vs_plain`: one CMPT training step (proxy tokens + alignment loss) over the time of the
  same model without them (the `baseline` method), on complete batches. Target <= 1.03.
- `infer_speedup_one_missing`: CMPT inference on a batch whose images are all missing (the image encoder is not
  run) over the same batch with the placeholder image run through the image encoder for every sample.
  Target >= 1.8. The same figure for missing text is reported beside it: with dynamic padding a batch of empty-
  string placeholders is only `[CLS] [SEP]` long, so skipping it saves little there.

Both encoders have the same width and depth and read the same number of tokens (a 224x224 image in 16x16
patches, 196 + 1 tokens; a text of 196 word pieces + [CLS]), so that skipping one is skipping half the work.
They are narrow (width 128) but as deep as the paper's ViT-B and BERT-base (12 layers), because depth sets the
training overhead: the proxy token is a learnable INPUT of the first layer, so backpropagation must also compute
the gradient with respect to the first layer's input, a fixed cost that a shallow encoder cannot amortise. Steps
are timed in pairs and the median of the per-pair ratios is reported (see `paired`).
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from .registry import build_model
from .tiny import WORDS, save_tiny_encoder


def _samples(batch_size: int, text_tokens: int) -> list[dict]:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(text_tokens))
    return [
        {"image": Image.new("RGB", (224, 224), (i * 20 % 255, 90, 160)), "text": text, "label": i % 2}
        for i in range(batch_size)
    ]


KINDS = ("placeholder", "skipped")


def _timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def paired(first, second, repeats: int, warmup: int) -> dict:
    """Time two steps back to back, `repeats` times after `warmup`, alternating which goes first.

    Each pair gives one ratio (first / second) from two steps a few hundred milliseconds apart, so that slow
    drift of the machine (clock, the other core's load) cancels out of the ratio; the median of the ratios is
    the figure. Also returns each step's median time in ms.
    """
    ratios, times = [], ([], [])
    for index in range(warmup + repeats):
        if index % 2:
            b, a = _timed(second), _timed(first)
        else:
            a, b = _timed(first), _timed(second)
        if index >= warmup:
            ratios.append(a / b)
            times[0].append(a)
            times[1].append(b)
    return {"ratios": ratios, "ms": [round(1000 * statistics.median(t), 3) for t in times]}


def run_benchmark(
    hidden_size: int = 128, num_layers: int = 12, batch_size: int = 8, repeats: int = 30, warmup: int = 4
) -> dict:
    with tempfile.TemporaryDirectory() as root:
        encoders = {
            "image": save_tiny_encoder("image", Path(root) / "image", hidden_size, num_layers, image_size=224),
            "text": save_tiny_encoder("text", Path(root) / "text", hidden_size, num_layers),
        }
        options = dict(encoders=encoders, num_classes=2, modality_dropout="none")
        models = {"cmpt": build_model("cmpt", **options), "plain": build_model("baseline", **options)}
    text_tokens = (224 // 16) ** 2 - 1  # with [CLS] and [SEP]: as many tokens as the image has
    samples = _samples(batch_size, text_tokens)

    optimizers = {
        name: torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        for name, model in models.items()
    }
    batch = models["cmpt"].collate(samples)

    def train_step(name):
        def step():
            optimizers[name].zero_grad()
            models[name](batch).loss.backward()
            optimizers[name].step()

        return step

    cmpt = models["cmpt"]
    without = {"image": cmpt.collate([{**s, "image": None} for s in samples]),
               "text": cmpt.collate([{**s, "text": None} for s in samples])}
    placeholder = {"image": cmpt.collate([{**s, "image": Image.new("RGB", (224, 224))} for s in samples]),
                   "text": cmpt.collate([{**s, "text": ""} for s in samples])}

    def infer(b):
        def step():
            with torch.no_grad():
                cmpt(b)

        return step

    for model in models.values():
        model.train()
    train = paired(train_step("cmpt"), train_step("plain"), repeats, warmup)
    cmpt.eval()
    skipping = {m: paired(infer(placeholder[m]), infer(without[m]), repeats, warmup) for m in without}
    speedup = {m: round(statistics.median(result["ratios"]), 3) for m, result in skipping.items()}
    ms = {
        "cmpt": train["ms"][0],
        "plain": train["ms"][1],
        **{f"{m}_{kind}": result["ms"][i] for m, result in skipping.items() for i, kind in enumerate(KINDS)},
    }
    return {
        "train_step_ratio_cmpt_vs_plain": round(statistics.median(train["ratios"]), 4),
        "train_step_ratio_quartiles": [round(q, 4) for q in statistics.quantiles(train["ratios"], n=4)[::2]],
        "infer_speedup_one_missing": speedup["image"],
        "infer_speedup_one_missing_by_modality": speedup,
        "targets": {"train_step_ratio_cmpt_vs_plain": "<= 1.03", "infer_speedup_one_missing": ">= 1.8"},
        "median_ms": ms,
        "setup": {
            "encoders": f"ViT and BERT, hidden {hidden_size}, {num_layers} layers, 197 tokens each (+1 proxy for CMPT)",
            "batch_size": batch_size,
            "repeats": repeats,
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        },
    }


def main(args) -> None:
    result = run_benchmark(args.hidden_size, args.num_layers, args.batch_size, args.repeats)
    print(json.dumps(result, indent=2))
