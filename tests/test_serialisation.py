"""Models saved by earlier versions of robustmm load and predict as they did; run configs and options written with
the former field names (`EncoderConfig.dropout`, `AdapterConfig.kind`) still work."""

import json
import shutil
from pathlib import Path

import pytest
import torch

import robustmm
from robustmm.contract import every_pattern
from robustmm.serialisation import FORMAT_VERSION

FIXTURES = Path(__file__).resolve().parent / "fixtures"

UPGRADED = {
    "format2/cmpt-ln": lambda c: c.fusion_options == {"norm": "layernorm"} and c.adapter.type == "lora",
    "format2/molt": lambda c: c.fusion_options == {"norm": "none", "layers": 1, "heads": 4, "dropout": 0.1}
    and c.adapter.type == "none",
    "format3/cmpt-dora": lambda c: (c.adapter.type, c.adapter.rank) == ("dora", 2)
    and [e.keep_backbone_dropout for e in c.encoders.values()] == [False, True],
}


@pytest.mark.parametrize("name", list(UPGRADED))
def test_a_model_saved_by_an_earlier_format_loads_and_predicts_as_it_did(tiny_encoders, tmp_path, name):
    """Saved by the version of its format after a short training (format 2: `cmpt` with fusion_norm=layernorm,
    `molt` with fusion_layers=1; format 3: `cmpt` with a rank-2 DoRA and the text encoder's own dropout kept), with
    what it predicted then on the contract's samples of every pattern."""
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    config = (folder / "robustmm_config.json").read_text()
    assert json.loads(config)["format_version"] < FORMAT_VERSION
    config = config.replace("{image}", tiny_encoders["image"]).replace("{text}", tiny_encoders["text"])
    (folder / "robustmm_config.json").write_text(config)
    model = robustmm.load_model(folder)
    expected = torch.tensor(json.loads((folder / "predictions.json").read_text()))
    torch.testing.assert_close(model.predict(every_pattern(["image", "text"], 3)), expected, rtol=0, atol=1e-6)
    assert UPGRADED[name](model.config), model.config
    model.save_pretrained(tmp_path / "again")  # saved again, in today's format, under today's names
    saved = json.loads((tmp_path / "again" / "robustmm_config.json").read_text())
    assert saved["format_version"] == FORMAT_VERSION and "kind" not in saved["adapter"]
    assert all("keep_backbone_dropout" in e and "dropout" not in e for e in saved["encoders"].values())


def test_the_former_field_names_still_configure_a_model(tiny_encoders):
    encoders = {"image": tiny_encoders["image"], "text": {"name_or_path": tiny_encoders["text"], "dropout": True}}
    config = robustmm.build_model("cmpt", encoders=encoders, num_classes=3, adapter={"kind": "vera", "rank": 2}).config
    assert config.encoders["text"].keep_backbone_dropout and not config.encoders["image"].keep_backbone_dropout
    assert (config.adapter.type, config.adapter.rank) == ("vera", 2)


def test_a_former_name_beside_its_new_one_is_an_error_that_names_both(tiny_encoders):
    encoders = {"text": {"name_or_path": tiny_encoders["text"], "dropout": True, "keep_backbone_dropout": False}}
    with pytest.raises(ValueError, match="modality 'text': encoder: 'dropout' is the former name of "
                                         "'keep_backbone_dropout'; give one of them"):
        robustmm.build_model("cmpt", encoders=encoders, num_classes=3)
    with pytest.raises(ValueError, match="'kind' is the former name of 'type'"):
        robustmm.build_model("cmpt", encoders={"text": tiny_encoders["text"]}, num_classes=3,
                             adapter={"kind": "lora", "type": "dora"})
