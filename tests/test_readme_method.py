"""The README's "Adding a method" example runs, registers, and meets the method contract."""

import re
from pathlib import Path

import pytest
import torch

import robustmm
from robustmm.registry import METHODS
from robustmm.contract import every_pattern

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def example_method():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("## Adding a method", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(code.splitlines()) <= 35
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    yield "gated_mean"
    METHODS.entries.pop("gated_mean")


def test_the_readme_method_trains_saves_and_loads(example_method, tiny_encoders, tmp_path):
    assert example_method in robustmm.list_methods()
    encoders = {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}
    model = robustmm.build_model(example_method, encoders=encoders, num_classes=3, gate_init=0.5)
    samples = every_pattern(["image", "text"], 3)
    out = model.train()(model.collate(samples))
    assert set(out.losses) == {"gate_spread"} and torch.isfinite(out.loss)
    assert model.trainable_parameter_counts()["gates"] == 2
    trained = robustmm.train(model, samples, samples, epochs=1, batch_size=6, lr=1e-2, progress_bar=False,
                             out_dir=tmp_path / "run")
    loaded = robustmm.load_model(tmp_path / "run" / "model")
    torch.testing.assert_close(loaded.predict(samples), trained.predict(samples))
    with pytest.raises(TypeError, match="has no option gate"):
        robustmm.build_model(example_method, encoders=encoders, num_classes=3, gate=1.0)
