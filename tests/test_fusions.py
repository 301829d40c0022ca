"""Fusions as modules (`robustmm.fusions`): chosen by option on a method whose fusion is generic, the head sized
from the fusion's width, their options (`fusion_norm` among them) recorded and checked, and models of format 2
(fusion_norm and MoLT's fusion options at the top of the config) still loading with the same predictions."""

import json

import pytest
import torch

import robustmm
from robustmm.contract import SMALL, every_pattern
from robustmm.serialisation import FORMAT_VERSION
from robustmm.tiny import save_tiny_encoder

pytestmark = pytest.mark.usefixtures("one_thread")



def image_text(tiny_encoders):
    return {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}


@pytest.mark.parametrize("method, options, width", [
    ("baseline", {}, 32),
    ("baseline", {"fusion": "concat"}, 64),
    ("cmpt", {"fusion": "gated_mean"}, 32),
    ("rep", {}, 64),  # REP concatenates
    ("rep", {"fusion": "sum"}, 32),
    ("molt", {}, 16),  # MoLT's Transformer is d_c wide
    ("baseline", {"fusion": "transformer", "fusion_heads": 2}, 32),
])
def test_the_head_reads_the_fusions_width(tiny_encoders, method, options, width):
    model = robustmm.build_model(method, encoders=image_text(tiny_encoders), num_classes=3,
                                 **{**SMALL.get(method, {}), **options})
    assert model.fusion.out_features == model.fused_size() == width == model.head.in_features
    fused = model.eval()(model.collate(every_pattern(["image", "text"], 1))).fused
    assert fused.shape == (3, width)


def test_concat_fuses_encoders_of_different_widths_where_a_sum_cannot(tiny_encoders, tmp_path):
    wide = save_tiny_encoder("text", tmp_path / "wide", hidden_size=48)
    encoders = {"image": tiny_encoders["image"], "text": wide}
    model = robustmm.build_model("baseline", encoders=encoders, num_classes=3, fusion="concat")
    assert model.head.in_features == 32 + 48
    with pytest.raises(ValueError, match="additive fusion needs encoders of one hidden size.*fusion=concat"):
        robustmm.build_model("baseline", encoders=encoders, num_classes=3)


def test_an_unknown_fusion_or_fusion_option_names_the_known_ones():
    baseline = robustmm.registry.get_method("baseline")
    with pytest.raises(ValueError, match="unknown fusion 'nope'; available: concat, gated_mean, sum, transformer"):
        baseline.check_options({"fusion": "nope"})
    with pytest.raises(ValueError, match="fusion 'sum' has no option fusion_gate_init; its options are fusion_norm"):
        baseline.check_options({"fusion_gate_init": 0.5})
    with pytest.raises(ValueError, match="fusion_heads must be at least 1"):
        baseline.check_options({"fusion": "transformer", "fusion_heads": 0})
    with pytest.raises(ValueError, match="fusion must be one of transformer, got 'sum'"):  # MoLT's is its own
        robustmm.registry.get_method("molt").check_options({"fusion": "sum"})


@pytest.mark.parametrize("method, fusion", [("baseline", "gated_mean"), ("cmpt", "concat")])
def test_a_swapped_fusion_trains_and_is_recorded_in_the_saved_config(tiny_encoders, tmp_path, method, fusion):
    model = robustmm.build_model(method, encoders=image_text(tiny_encoders), num_classes=3, fusion=fusion,
                                 fusion_norm="layernorm")
    trained = robustmm.train(model, every_pattern(["image", "text"], 4), every_pattern(["image", "text"], 2),
                             out_dir=tmp_path / "run", epochs=1, batch_size=6, lr=1e-2, progress_bar=False)
    saved = json.loads((tmp_path / "run" / "model" / "robustmm_config.json").read_text())
    assert saved["format_version"] == FORMAT_VERSION and saved["fusion"] == fusion and saved["fusion_options"]["norm"] == "layernorm"
    assert "sources" not in saved  # a built-in fusion
    if fusion == "gated_mean":  # its gates train, at the method modules' rate
        assert {n for n, _ in trained.named_parameters() if n.startswith("fusion.")} == {"fusion.gates.image",
                                                                                       "fusion.gates.text"}
        assert not torch.equal(trained.fusion.gates["image"].detach(), torch.tensor(1.0))
    loaded = robustmm.load_model(tmp_path / "run" / "model")
    samples = every_pattern(["image", "text"], 1)
    torch.testing.assert_close(loaded.predict(samples), trained.predict(samples), rtol=0, atol=0)


def test_fusion_norm_is_the_fusions_option_and_normalizes_what_it_reads(tiny_encoders):
    model = robustmm.build_model("cmpt", encoders=image_text(tiny_encoders), num_classes=3, fusion_norm="layernorm")
    assert model.config.fusion_options == {"norm": "layernorm"} and model.fusion.config.norm == "layernorm"
    features = model.eval()(model.collate(every_pattern(["image", "text"], 1))).features
    image = features.cls["image"][features.cls["image"].abs().sum(-1) > 0]
    torch.testing.assert_close(image.mean(-1), torch.zeros(len(image)), atol=1e-5, rtol=0)
