"""`precision="auto"`: bf16 where the hardware computes it natively, fp32 everywhere else.

bf16 autocast halves memory traffic and is faster where the hardware has bf16 arithmetic: CUDA GPUs from Ampere
on, and CPUs with AVX512-BF16 or AMX. On any other CPU (AVX2 only: most laptops, many cloud VMs and CI runners)
PyTorch emulates bf16 and a forward pass is about 7x SLOWER than in fp32, so `auto` must not assume it.

The CPU probe also honours the switches that cap PyTorch's kernels below the hardware (`ATEN_CPU_CAPABILITY`,
`ONEDNN_MAX_CPU_ISA`), so a run that simulates an AVX2 CPU gets what such a CPU would get.
"""

from __future__ import annotations

import contextlib
import os
import sys

AUTO = "auto"
ONEDNN_BF16_ISAS = ("BF16", "AMX", "AVX10", "FP16", "ALL")
"""Fragments of the `ONEDNN_MAX_CPU_ISA` values that still allow oneDNN's bf16 kernels."""

_announced: set[tuple[str, str]] = set()


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX present, and neither ATen nor oneDNN capped below them."""
    import torch

    hardware = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    aten = torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    onednn = not cap or any(fragment in cap for fragment in ONEDNN_BF16_ISAS)
    return hardware and aten and onednn


def cuda_has_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def uses_cuda(accelerator: str) -> bool:
    import torch

    return accelerator in ("gpu", "cuda") or (accelerator == AUTO and torch.cuda.is_available())


def choose_precision(accelerator: str = AUTO) -> tuple[str, str]:
    """(Lightning precision, why) for the device that `accelerator` selects."""
    if uses_cuda(accelerator):
        if cuda_has_bf16():
            return "bf16-mixed", "CUDA device with bf16 support"
        return "32-true", "CUDA device without bf16 support"
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if cpu_has_native_bf16():
        return "bf16-mixed", f"CPU with native bf16 (AVX512-BF16/AMX, kernels {capability})"
    return "32-true", f"CPU without native bf16 (kernels {capability}): bf16 would be emulated and slower"


def resolve_precision(precision: str | None, accelerator: str = AUTO, announce=True) -> str:
    """The concrete precision of `precision` ("auto" or None: chosen by the hardware; anything else as given).

    The choice of `auto` is printed once per process and setting (to stderr), unless `announce` is False.
    """
    if precision not in (None, AUTO):
        return str(precision)
    chosen, why = choose_precision(accelerator)
    if announce and (accelerator, chosen) not in _announced:
        _announced.add((accelerator, chosen))
        print(f"precision auto -> {chosen} ({why})", file=sys.stderr)
    return chosen


def autocast(precision: str, device_type: str):
    """The autocast context of a Lightning `precision` string, for inference outside the Trainer (evaluation,
    prediction, serving, benchmarks): bf16 or fp16 autocast under the mixed precisions, nothing under 32-true."""
    import torch

    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)
