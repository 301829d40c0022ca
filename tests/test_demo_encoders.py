import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoModel, AutoTokenizer

from robustmm.data.demo_encoders import demo_encoder_paths
from robustmm.data.synthetic import SyntheticBenchmark

PROBE_SAMPLES = 200
HIDDEN_SIZE = 384


@pytest.fixture(scope="module")
def paths():
    return demo_encoder_paths()


@pytest.fixture(scope="module")
def benchmark_splits():
    benchmark = SyntheticBenchmark(modalities=("image", "audio"))
    return benchmark.sample(PROBE_SAMPLES, "train"), benchmark.sample(PROBE_SAMPLES, "val")


def test_paths_point_at_the_three_encoders(paths, minilm_path):
    assert set(paths) == {"image", "text", "audio"}
    assert paths["text"] == minilm_path
    for path in paths.values():
        assert (Path(path) / "config.json").is_file()


def test_weights_are_small_float16_and_load_as_float32(paths):
    for modality in ("image", "audio"):
        directory = Path(paths[modality])
        assert json.loads((directory / "config.json").read_text())["dtype"] == "float16"
        assert (directory / "model.safetensors").stat().st_size < 8 * 2**20
        model = AutoModel.from_pretrained(directory, dtype=torch.float32)
        assert model.config.hidden_size == HIDDEN_SIZE
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_minilm_encodes_text(paths):
    tokenizer = AutoTokenizer.from_pretrained(paths["text"])
    model = AutoModel.from_pretrained(paths["text"], dtype=torch.float32).eval()
    texts = SyntheticBenchmark(modalities=("text",)).sample(3, "train")
    inputs = tokenizer([s["text"] for s in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    assert hidden.shape == (3, inputs["input_ids"].shape[1], HIDDEN_SIZE)


def cls_features(modality: str, path: str, samples: list[dict]) -> np.ndarray:
    """CLS features of the frozen encoder, with inputs prepared by its own saved processor."""
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    if modality == "image":
        processor = AutoImageProcessor.from_pretrained(path)
        assert processor.size == {"height": 32, "width": 32}
        inputs = processor(images=[s["image"] for s in samples], return_tensors="pt")
        assert inputs["pixel_values"].shape == (len(samples), 3, 32, 32)
    else:
        extractor = AutoFeatureExtractor.from_pretrained(path)
        assert (extractor.num_mel_bins, extractor.max_length) == (model.config.num_mel_bins, model.config.max_length)
        assert extractor.sampling_rate == 16000 and extractor.do_normalize
        inputs = extractor([s["audio"] for s in samples], sampling_rate=16000, return_tensors="pt")
        assert inputs["input_values"].shape == (len(samples), model.config.max_length, model.config.num_mel_bins)
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    assert hidden.shape[0] == len(samples) and hidden.shape[-1] == HIDDEN_SIZE
    return hidden[:, 0].numpy()


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_shipped_encoders_speak_as_loud_as_the_text_encoder(paths, benchmark_splits, modality, minilm_path):
    """Additive fusion should not favour a modality by the scale of its encoder: the class features of the
    shipped encoders have the text encoder's spread, within 15% (measured on other samples than the script's)."""
    train, _ = benchmark_splits
    spread = cls_features(modality, paths[modality], train).std(axis=0).mean()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model = AutoModel.from_pretrained(minilm_path, dtype=torch.float32).eval()
    texts = [s["text"] for s in SyntheticBenchmark(modalities=("text",)).sample(PROBE_SAMPLES, "train")]
    with torch.no_grad():
        text = model(**tokenizer(texts, padding=True, return_tensors="pt")).last_hidden_state[:, 0].numpy()
    assert spread == pytest.approx(text.std(axis=0).mean(), rel=0.15)


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_cls_features_predict_the_class(paths, benchmark_splits, modality):
    """A linear probe on 200 train samples beats chance (1/8) by far on 200 val samples."""
    train, val = benchmark_splits
    train_features, val_features = (cls_features(modality, paths[modality], split) for split in (train, val))
    scaler = StandardScaler().fit(train_features)
    probe = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(train_features), [s["label"] for s in train])
    accuracy = probe.score(scaler.transform(val_features), [s["label"] for s in val])
    assert accuracy > 0.4, f"{modality} probe accuracy {accuracy:.3f}"


def test_pretraining_script_writes_loadable_encoders(tmp_path):
    """The script that made the shipped weights still runs (a tiny run), and writes what `from_pretrained` reads."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "pretrain_demo_encoders.py"
    subprocess.run(
        [sys.executable, str(script), "--output", str(tmp_path), "--train-samples", "64", "--heldout-samples", "32",
         "--epochs", "1", "--threads", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    for modality in ("image", "audio"):
        record = json.loads((tmp_path / modality / "pretraining.json").read_text())
        assert record["train_samples"] == 64 and set(record["heldout_accuracy"]) >= {"message"}
        spread = record["feature_spread"]  # the class feature rescaled to the text encoder's spread
        assert spread["after"] == pytest.approx(spread["reference_text"], rel=1e-3)
        model = AutoModel.from_pretrained(tmp_path / modality, dtype=torch.float32)
        assert model.config.hidden_size == HIDDEN_SIZE
    assert AutoImageProcessor.from_pretrained(tmp_path / "image").size == {"height": 32, "width": 32}
    assert AutoFeatureExtractor.from_pretrained(tmp_path / "audio").do_normalize
    assert (tmp_path / "README.md").is_file()
