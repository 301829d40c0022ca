"""`robustmm bench --size`: the throughput JSON, its FLOP count, the peak table, and clear errors."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, ViTConfig

from robustmm.bench import SIZES, encoder_flops, peak_flops
from robustmm.cli import main


def test_encoder_flops_of_vit_base_and_bert_base_by_hand():
    # Linear weights of 12 layers: 12 * (4 * 768^2 + 2 * 768 * 3072) = 84,934,656, 2 FLOPs each per token.
    # ViT-B/16 reads 196 patches + CLS + 1 proxy = 198 tokens: 2 * 84,934,656 * 198; attention 4 * 12 * 198^2 * 768.
    assert encoder_flops(ViTConfig(), 198) == (33_634_123_776, 1_445_216_256)
    # BERT-base with 40 word pieces + 1 proxy: 2 * 84,934,656 * 41 and 4 * 12 * 41^2 * 768.
    assert encoder_flops(BertConfig(), 41) == (6_964_641_792, 61_968_384)


def test_tiny_throughput_on_cpu(capsys):
    main(["bench", "--size", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1"])
    result = json.loads(capsys.readouterr().out)

    for key in ("samples_per_s", "achieved_tflops", "peak_memory_bytes", "flops_per_step"):
        assert math.isfinite(result[key]) and result[key] > 0, key
    q1, q3 = result["step_ms"]["quartiles"]
    assert 0 < q1 <= result["step_ms"]["median"] <= q3
    assert result["samples_per_s"] == pytest.approx(32_000 / result["step_ms"]["median"], rel=1e-3)

    # Width 64, 2 layers, MLP 128; the image is 32 px in 16 px patches: 4 + CLS + 1 proxy; the text 16 + 1 proxy.
    tiny = SIZES["tiny"]
    assert (tiny.hidden_size, tiny.num_layers, tiny.intermediate_size) == (64, 2, 128)
    assert result["setup"]["tokens"] == {"image": 6, "text": 17}
    d, layers, d_ff = 64, 2, 128
    per_sample = sum(2 * 2 * layers * (4 * d * d + 2 * d * d_ff) * t + 3 * 4 * layers * t * t * d for t in (6, 17))
    assert result["flops_per_step"] == 32 * per_sample
    assert result["achieved_tflops"] == pytest.approx(
        result["flops_per_step"] / result["step_ms"]["median"] / 1e9, rel=2e-3
    )

    assert result["mfu"] is None and result["peak_tflops_assumed"] is None and result["peak_matched"] is None
    assert result["precision"] in ("32-true", "bf16-mixed")
    assert result["device"] == "cpu" and result["torch"] == torch.__version__
    assert "4*P*T + 12*L*T^2*d" in result["flop_formula"]
    assert "ru_maxrss" in result["peak_memory_measure"]


@pytest.mark.parametrize(
    "name, precision, expected",
    [
        ("NVIDIA H100 PCIe", "bf16-mixed", (756e12, "H100 PCIe", "bf16")),
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", (989.4e12, "H100", "bf16")),
        ("NVIDIA H200", "32-true", (66.9e12, "H200", "fp32")),
        ("NVIDIA A100-SXM4-80GB", "bf16-mixed", (312e12, "A100", "bf16")),
        ("NVIDIA RTX A1000", "bf16-mixed", (None, None, "bf16")),
        ("NVIDIA L40S", "bf16-mixed", (None, None, "bf16")),
    ],
)
def test_peak_flops_matches_whole_names(monkeypatch, name, precision, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.backends.cuda, "matmul", SimpleNamespace(allow_tf32=False))
    assert peak_flops(torch.device("cuda"), precision) == expected


def test_tf32_peak_when_fp32_matmuls_may_use_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-PCIE-40GB")
    monkeypatch.setattr(torch.backends.cuda, "matmul", SimpleNamespace(allow_tf32=True))
    assert peak_flops(torch.device("cuda"), "32-true") == (156e12, "A100", "tf32")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--size", "tiny", "--device", "cuda"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "robustmm bench: error: device cuda" in error and "no CUDA GPU" in error and "Traceback" not in error


def test_flags_of_the_other_mode_are_errors(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--device", "cpu"])
    assert "--device: only for the throughput measurement" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--size", "tiny", "--repeats", "3"])
    assert "--repeats: only for the CMPT-overhead measurement" in capsys.readouterr().err
