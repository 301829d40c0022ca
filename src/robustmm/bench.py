"""`robustmm bench`: the cost of CMPT on the CPU (the default), or the throughput of CMPT training on a device.

Without `--size`: the cost of CMPT, measured side by side in one run on tiny encoders of equal size
(`run_benchmark`).

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
are timed in pairs and the median of the per-pair ratios is reported (see `paired`). Steps run under
`--precision` (default auto, see `robustmm.precision`), recorded as `setup.precision`.

With `--size tiny|base`: samples/s, step time, peak memory, FLOP/s and MFU of one CMPT training step (forward,
backward, AdamW) on `--device` (`run_throughput`). `base` is ViT-B/16 and BERT-base built from their configs with
random weights (no download), batch 32, 197 image and 40 text tokens; `tiny` is the same at width 64, for tests.
The encoders are saved and loaded back with `from_pretrained(path)`, the path of real checkpoints.

FLOPs of a step (`FLOP_FORMULA`, computed from the encoders' configs by `train_step_flops`). An encoder of width
d, depth L and MLP width d_ff that reads T tokens (its proxy tokens included) costs, per sample, forward:
2*P*T in its linear layers, P = L*(4*d^2 + 2*d*d_ff) (the four attention projections and the two MLP
matrices), plus 4*L*T^2*d in attention (Q K^T and the product with V). The encoders are frozen, so the backward
pass computes no gradients of those weights (the usual "6N" count would add 2*P*T for them): it only propagates
gradients to the activations, down to the first layer, whose input holds the proxy tokens. For a linear layer
that costs what its forward did (2*P*T); each attention product multiplies two activations, which both need a
gradient (2 * 4*L*T^2*d). A step is B * (4*P*T + 12*L*T^2*d) summed over the encoders, slightly more than twice
the forward count. Not counted: embeddings, norms, softmax, GELU, poolers, the head, the losses and the rank-1
LoRA matmuls (about 0.1% of a step at width 768).

MFU is that count per second over the device's dense peak (`PEAK_FLOPS`, no sparsity) for the dtype of the
matmuls: bf16 under `bf16-mixed`; under `32-true`, TF32 when PyTorch lets fp32 matmuls use it
(`torch.backends.cuda.matmul.allow_tf32`, set by `torch.set_float32_matmul_precision("high")`), else fp32. It is
null on a CPU and on GPUs not in the table.
"""

from __future__ import annotations

import json
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image

from .precision import autocast, resolve_precision
from .registry import build_model
from .tiny import WORDS, save_tiny_encoder

PRECISIONS = ("32-true", "bf16-mixed")


def _samples(batch_size: int, words: int, image_size: int = 224, num_classes: int = 2) -> list[dict]:
    text = " ".join(WORDS[i % len(WORDS)] for i in range(words))
    return [
        {"image": Image.new("RGB", (image_size, image_size), (i * 20 % 255, 90, 160)), "text": text,
         "label": i % num_classes}
        for i in range(batch_size)
    ]


def bench_precision(precision: str, device_type: str) -> str:
    """`auto` resolved for the device; the benchmarks measure fp32 and bf16 only."""
    precision = resolve_precision(precision, device_type)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose auto or one of {', '.join(PRECISIONS)}")
    return precision


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
    hidden_size: int = 128,
    num_layers: int = 12,
    batch_size: int = 8,
    repeats: int = 30,
    warmup: int = 4,
    precision: str = "auto",
) -> dict:
    precision = bench_precision(precision, "cpu")
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
            with autocast(precision, "cpu"):
                loss = models[name](batch).loss
            loss.backward()
            optimizers[name].step()

        return step

    cmpt = models["cmpt"]
    without = {"image": cmpt.collate([{**s, "image": None} for s in samples]),
               "text": cmpt.collate([{**s, "text": None} for s in samples])}
    placeholder = {"image": cmpt.collate([{**s, "image": Image.new("RGB", (224, 224))} for s in samples]),
                   "text": cmpt.collate([{**s, "text": ""} for s in samples])}

    def infer(b):
        def step():
            with torch.no_grad(), autocast(precision, "cpu"):
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
            "precision": precision,
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
        },
    }


# ----- throughput of a CMPT training step on a device (`--size`) -------------------------------------------------


@dataclass(frozen=True)
class Size:
    """The shape of both encoders (a ViT and a BERT of one width and depth) and the tokens they read."""

    hidden_size: int
    num_layers: int
    heads: int
    intermediate_size: int
    image_size: int
    patch_size: int
    text_tokens: int
    """Word pieces of every text, [CLS] and [SEP] included: the text encoder's `max_length`."""
    vocab_size: int | None = None
    """None: the tiny tokenizer's own vocabulary."""


SIZES = {
    "tiny": Size(64, 2, 2, 128, image_size=32, patch_size=16, text_tokens=16),
    "base": Size(768, 12, 12, 3072, image_size=224, patch_size=16, text_tokens=40, vocab_size=30522),
}
"""`tiny` runs a step in milliseconds on a CPU; `base` is ViT-B/16 + BERT-base with Food-101's 40 text tokens."""

NUM_CLASSES = 101
"""Food-101's classes; the head's cost is negligible either way."""

FLOP_FORMULA = (
    "flops_per_step = sum over encoders of B * (4*P*T + 12*L*T^2*d), P = L*(4*d^2 + 2*d*d_ff): forward 2*P*T "
    "(linear layers of the transformer layers) + 4*L*T^2*d (attention products); the encoders are frozen, so the "
    "backward computes activation gradients only: 2*P*T for the linear layers, 2 * 4*L*T^2*d for the attention "
    "products (both operands are activations). B: samples that have the modality; T: tokens the encoder reads, "
    "proxy tokens included; L, d, d_ff from the encoder's config. Embeddings, norms, softmax, GELU, poolers, head, "
    "losses and rank-1 LoRA are not counted."
)

PEAK_FLOPS = (
    # (name matched as a whole word in torch.cuda.get_device_name(), dense FLOP/s by matmul dtype); first match wins
    ("H100 PCIe", {"bf16": 756e12, "tf32": 378e12, "fp32": 51.2e12}),
    ("H100 NVL", {"bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12}),
    ("H200 NVL", {"bf16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12}),
    ("H100", {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    ("H200", {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}),
    ("A100", {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("L4", {"bf16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    ("RTX 4090", {"bf16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12}),
)
"""NVIDIA's datasheet peaks without sparsity (half the "with sparsity" figures). Unlisted devices get no MFU."""


def encoder_flops(config, tokens: int) -> tuple[int, int]:
    """Forward FLOPs of one sample through an encoder's transformer layers: (linear layers, attention products)."""
    d, layers, d_ff = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    return 2 * layers * (4 * d * d + 2 * d * d_ff) * tokens, 4 * layers * tokens**2 * d


def tokens_read(encoder, inputs: dict[str, torch.Tensor]) -> int:
    """Tokens that `encoder` (a text model or a ViT) reads for `inputs`, its proxy tokens included."""
    if "input_ids" in inputs:
        tokens = inputs["input_ids"].shape[1]
    else:  # one token per patch, plus the class token
        patch = encoder.backbone.get_base_model().config.patch_size
        height, width = inputs["pixel_values"].shape[-2:]
        tokens = (height // patch) * (width // patch) + 1
    return tokens + encoder.num_prefix_tokens


def train_step_flops(model, batch) -> tuple[int, dict[str, int]]:
    """(FLOPs of one training step of `model` on `batch` by `FLOP_FORMULA`, tokens read per modality)."""
    total, tokens = 0, {}
    for modality, encoder in model.encoders.items():
        tokens[modality] = tokens_read(encoder, batch.inputs[modality])
        linear, attention = encoder_flops(encoder.backbone.get_base_model().config, tokens[modality])
        total += int(batch.present[modality].sum()) * (2 * linear + 3 * attention)
    return total, tokens


def peak_flops(device: torch.device, precision: str) -> tuple[float | None, str | None, str]:
    """(assumed peak FLOP/s or None, the `PEAK_FLOPS` row matched, the dtype of the matmuls)."""
    if precision == "bf16-mixed":
        dtype = "bf16"
    elif device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        dtype = "tf32"
    else:
        dtype = "fp32"
    if device.type != "cuda":
        return None, None, dtype
    name = torch.cuda.get_device_name(device)
    for row, peaks in PEAK_FLOPS:
        if re.search(rf"\b{re.escape(row)}\b", name):
            return peaks[dtype], row, dtype
    return None, None, dtype


def resolve_device(name: str) -> torch.device:
    """"auto": CUDA when PyTorch sees a GPU, else the CPU. Asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device cuda: PyTorch {torch.__version__} sees no CUDA GPU (built with CUDA {torch.version.cuda}); "
            "use --device cpu"
        )
    return torch.device(name)


def build_sized_model(size: Size, root: str | Path):
    """A CMPT model over a ViT and a BERT of `size` with random weights, saved under `root` and loaded back."""
    shape = dict(
        hidden_size=size.hidden_size, num_layers=size.num_layers, heads=size.heads,
        intermediate_size=size.intermediate_size,
    )
    image = save_tiny_encoder(
        "image", Path(root) / "image", image_size=size.image_size, patch_size=size.patch_size, **shape
    )
    text = save_tiny_encoder("text", Path(root) / "text", vocab_size=size.vocab_size, **shape)
    encoders = {"image": image, "text": {"name_or_path": text, "max_length": size.text_tokens}}
    return build_model("cmpt", encoders=encoders, num_classes=NUM_CLASSES, modality_dropout="none")


def time_steps(step, steps: int, warmup: int, device: torch.device) -> dict:
    """Run `warmup` steps, then time `steps` (synchronising CUDA around each); median and quartiles in ms."""
    cuda = device.type == "cuda"

    def timed() -> float:
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    warm = [timed() for _ in range(warmup)]
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = [timed() for _ in range(steps)]
    q1, median, q3 = statistics.quantiles(times, n=4, method="inclusive")
    if cuda:
        memory, measure = torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated, timed steps"
    else:
        import resource

        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
        measure = "max RSS of the whole process (getrusage ru_maxrss), not the steps alone"
    return {
        "median_s": median,
        "step_ms": {"median": round(1000 * median, 3), "quartiles": [round(1000 * q1, 3), round(1000 * q3, 3)]},
        "warmup_s": round(sum(warm), 3),
        "peak_memory_bytes": memory,
        "peak_memory_measure": measure,
    }


def _significant(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def run_throughput(
    size: str = "tiny",
    device: str = "auto",
    batch_size: int = 32,
    steps: int = 20,
    warmup: int = 3,
    precision: str = "auto",
    torch_compile: bool = False,
) -> dict:
    """Time a CMPT training step (forward, backward, AdamW) at `size` on `device`; see the module docstring.

    With `torch_compile`, the eager model is timed first, then its encoders are compiled (`nn.Module.compile`)
    and timed again: the top-level figures are the compiled ones, `compile` holds the eager ones, the speed-up
    and the compile time (the warm-up steps beyond as many steady steps). A failure to compile is reported there
    and leaves the eager figures at the top.
    """
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if steps < 2 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 2, warmup >= 0 and batch size >= 1, got {steps}, {warmup}, {batch_size}")
    if torch_compile and warmup < 1:
        raise ValueError("--compile needs warmup >= 1: the first step compiles")
    device = resolve_device(device)
    precision = bench_precision(precision, device.type)
    shape = SIZES[size]
    with tempfile.TemporaryDirectory() as root:
        model = build_sized_model(shape, root)
    batch = model.collate(_samples(batch_size, shape.text_tokens, shape.image_size, NUM_CLASSES))
    flops, tokens = train_step_flops(model, batch)
    model, batch = model.to(device).train(), batch.to(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        optimizer.zero_grad()
        with autocast(precision, device.type):
            loss = model(batch).loss
        loss.backward()
        optimizer.step()

    timing = time_steps(step, steps, warmup, device)
    compiled = None
    if torch_compile:
        eager = timing
        try:
            for encoder in model.encoders.values():
                encoder.compile()
            timing = time_steps(step, steps, warmup, device)
        except Exception as error:  # noqa: BLE001  (any backend failure is a result to report)
            compiled = {"error": f"{type(error).__name__}: {error}"}
        else:
            compiled = {
                "compile_s": round(timing["warmup_s"] - warmup * timing["median_s"], 3),
                "compile_speedup": round(eager["median_s"] / timing["median_s"], 3),
                "eager": {k: v for k, v in eager.items() if k != "median_s"},
            }

    peak, matched, dtype = peak_flops(device, precision)
    seconds = timing.pop("median_s")
    achieved = flops / seconds
    cuda = device.type == "cuda"
    device_name = torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine()
    if peak is not None:
        note = f"dense {dtype} peak of {matched}"
    else:
        note = f"no peak FLOP/s known for {device_name}; add it to PEAK_FLOPS" if cuda else "no peak assumed for CPUs"
    return {
        "mode": "throughput",
        "size": size,
        "samples_per_s": round(batch_size / seconds, 2),
        **timing,
        "flops_per_step": flops,
        "achieved_tflops": _significant(achieved / 1e12),
        "peak_tflops_assumed": None if peak is None else peak / 1e12,
        "peak_matched": matched,
        "matmul_dtype": dtype,
        "mfu": None if peak is None else _significant(achieved / peak),
        "mfu_note": note,
        "precision": precision,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "device": device.type,
        "device_name": device_name,
        "torch": torch.__version__,
        "flop_formula": FLOP_FORMULA,
        **({} if compiled is None else {"compile": compiled}),
        "setup": {
            "shape": asdict(shape),
            "tokens": tokens,
            "batch_size": batch_size,
            "steps": steps,
            "warmup": warmup,
            "num_classes": NUM_CLASSES,
            "torch_threads": torch.get_num_threads(),
        },
    }


OVERHEAD_FLAGS = {"hidden_size": "--hidden-size", "num_layers": "--num-layers", "repeats": "--repeats"}
THROUGHPUT_FLAGS = {"device": "--device", "steps": "--steps", "warmup": "--warmup", "torch_compile": "--compile"}


def main(args) -> None:
    """Without `--size` the CMPT-overhead figures, with it the throughput; a flag of the other mode is an error."""
    own, other = (THROUGHPUT_FLAGS, OVERHEAD_FLAGS) if args.size else (OVERHEAD_FLAGS, THROUGHPUT_FLAGS)
    stray = [flag for name, flag in other.items() if getattr(args, name) is not None]
    if stray:
        mode = "the CMPT-overhead measurement (no --size)" if args.size else "the throughput measurement (--size)"
        raise ValueError(f"{', '.join(stray)}: only for {mode}")
    options = {
        name: getattr(args, name) for name in ("batch_size", "precision", *own) if getattr(args, name) is not None
    }
    result = run_throughput(args.size, **options) if args.size else run_benchmark(**options)
    print(json.dumps(result, indent=2))
