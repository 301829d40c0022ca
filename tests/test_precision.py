"""`precision="auto"`: bf16 only where the hardware computes it natively, with the probes faked."""

import pytest
import torch

from robustmm import precision
from robustmm.precision import choose_precision, cpu_has_native_bf16, resolve_precision


@pytest.fixture
def cpu(monkeypatch):
    """A CPU whose bf16 instructions, ATen kernel level and oneDNN cap the test sets; no CUDA."""

    def make(bf16: bool, amx: bool = False, kernels: str = "AVX512", onednn_cap: str | None = None):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: kernels)
        if onednn_cap is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn_cap)

    return make


def test_an_avx2_cpu_trains_in_fp32(cpu):
    cpu(bf16=False, kernels="AVX2")
    assert choose_precision()[0] == "32-true"


def test_avx512_without_bf16_instructions_trains_in_fp32(cpu):
    cpu(bf16=False, amx=False, kernels="AVX512")
    assert not cpu_has_native_bf16() and choose_precision()[0] == "32-true"


@pytest.mark.parametrize("bf16, amx", [(True, False), (False, True), (True, True)])
def test_native_bf16_cpus_train_in_bf16(cpu, bf16, amx):
    cpu(bf16=bf16, amx=amx)
    assert choose_precision("cpu")[0] == "bf16-mixed"


@pytest.mark.parametrize("kernels, cap", [("AVX2", None), ("AVX512", "AVX2"), ("AVX512", "avx512_core")])
def test_kernels_capped_below_bf16_count_as_no_bf16(cpu, kernels, cap):
    """ATEN_CPU_CAPABILITY=avx2 or ONEDNN_MAX_CPU_ISA=AVX2 on bf16 hardware: what an AVX2 CPU would get."""
    cpu(bf16=True, amx=True, kernels=kernels, onednn_cap=cap)
    assert choose_precision()[0] == "32-true"


def test_a_onednn_cap_that_keeps_bf16_keeps_it(cpu):
    cpu(bf16=True, onednn_cap="AVX512_CORE_BF16")
    assert choose_precision()[0] == "bf16-mixed"


@pytest.mark.parametrize("supported, expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_cuda_devices_use_bf16_where_supported(monkeypatch, cpu, supported, expected):
    cpu(bf16=False, kernels="AVX2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)
    assert choose_precision("auto")[0] == expected
    assert choose_precision("gpu")[0] == expected
    assert choose_precision("cpu")[0] == "32-true"  # an explicit CPU run on a GPU machine asks the CPU


def test_an_explicit_precision_wins_and_auto_is_announced_once(cpu, monkeypatch, capsys):
    cpu(bf16=False, kernels="AVX2")
    monkeypatch.setattr(precision, "_announced", set())
    assert resolve_precision("bf16-mixed") == "bf16-mixed"
    assert capsys.readouterr().err == ""
    assert resolve_precision("auto") == "32-true" and resolve_precision(None) == "32-true"
    err = capsys.readouterr().err
    assert err.count("precision auto -> 32-true") == 1 and "without native bf16" in err


def test_training_records_the_chosen_precision(cpu, tiny_encoders, tmp_path, monkeypatch):
    import json

    import robustmm

    cpu(bf16=False, kernels="AVX2")
    model = robustmm.build_model("baseline", encoders={"text": tiny_encoders["text"]}, num_classes=2)
    samples = [{"text": "a red dog", "label": 0}, {"text": "a blue cat", "label": 1}] * 2
    robustmm.train(model, samples, samples, epochs=1, batch_size=4, warmup_epochs=0, progress_bar=False,
                   out_dir=tmp_path)
    assert json.loads((tmp_path / "train_config.json").read_text())["precision"] == "32-true"


@pytest.mark.parametrize("name, dtype", [("bf16-mixed", torch.bfloat16), ("32-true", torch.float32)])
def test_autocast_follows_the_lightning_precision_string(name, dtype):
    a = torch.randn(4, 4)
    with precision.autocast(name, "cpu"):
        assert (a @ a).dtype == dtype
