"""Every Python block of the README runs: the walk-through and "Adding a method" blocks in their own tests, every
other block here ("Adding a fusion" is the built-in `gated_mean` as it is), with tiny stand-in encoders where it
names hub ids and the samples it assumes."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks_not_run_elsewhere() -> list[str]:
    """The README's Python blocks but the walk-through's (test_walkthrough.py), the method example's
    (test_readme_method.py) and the fusion's (below)."""
    text = README.read_text()
    walkthrough = re.search(r"<!-- walkthrough:python -->\n```python\n(.*?)```", text, re.S).group(1)
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return [b for b in blocks if b != walkthrough and "@robustmm.register_method(" not in b
            and "@robustmm.register_fusion(" not in b]


def test_the_fusion_example_is_the_built_in_gated_mean_and_fuses_the_visible_features(tiny_encoders):
    import torch

    import robustmm
    from robustmm.contract import every_pattern

    section = README.read_text().split("## Adding a fusion", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    source = Path(robustmm.__file__).parent / "fusions" / "gated_mean.py"
    assert code == source.read_text() and len(code.splitlines()) <= 40
    encoders = {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}
    model = robustmm.build_model("rep", encoders=encoders, num_classes=3, buffer_length=2, depth=2,
                                 fusion="gated_mean", fusion_gate_init=0.5)
    with torch.no_grad():
        model.fusion.gates["text"].fill_(-2.0)  # its magnitude weighs
    output = model.eval()(model.collate(every_pattern(["image", "text"], 1)))
    cls, visible = output.features.cls, output.availability.visible
    weights = {"image": 0.5 * visible["image"][:, None], "text": 2.0 * visible["text"][:, None]}
    expected = (weights["image"] * cls["image"] + weights["text"] * cls["text"]) / (weights["image"] + weights["text"])
    torch.testing.assert_close(output.fused, expected)


def test_the_use_block_runs_with_stand_in_encoders(tiny_encoders, tmp_path, monkeypatch):
    (block,) = blocks_not_run_elsewhere()  # "Use"; a new block needs its own stand-ins here
    code = block.replace("openai/clip-vit-base-patch16", tiny_encoders["clip"]).replace(
        "bert-base-uncased", tiny_encoders["text"]
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    picture = lambda: Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))  # noqa: E731
    picture().save(tmp_path / "photos" / "c.jpg")
    labelled = [{"image": picture(), "text": "a red cake", "label": i % 3} for i in range(4)]
    namespace = {"pil_image": picture(), "train_samples": labelled, "val_samples": labelled}
    exec(compile(code, "README.md", "exec"), namespace)
    output = namespace["output"]
    assert output.logits.shape == (3, 101) and output.features.cls["image"].shape[0] == 3
    assert (Path(tmp_path) / "my-model").is_dir()
