"""The README's "Adding a method" shows the example package's method as it is, and that code registers, trains,
saves and loads in the process that defines it (`test_outside_method.py` installs the package and runs it in
new processes)."""

import re
from pathlib import Path

import pytest
import torch

import robustmm
from robustmm.contract import every_pattern
from robustmm.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).parents[1]


@pytest.fixture
def example_method():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Adding a method", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    assert code == (ROOT / "examples" / "late_token" / "late_token.py").read_text()
    assert len(code.splitlines()) <= 40
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    yield "late_token"
    METHODS.entries.pop("late_token")


def test_the_readme_method_trains_saves_and_loads(example_method, tiny_encoders, tmp_path):
    assert example_method in robustmm.list_methods()
    encoders = {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}
    model = robustmm.build_model(example_method, encoders=encoders, num_classes=3, norm_weight=0.5)
    samples = every_pattern(["image", "text"], 3)
    out = model.train()(model.collate(samples))
    assert set(out.losses) == {"token_norm"} and out.loss_weights == {"token_norm": 0.5} and torch.isfinite(out.loss)
    assert model.trainable_parameter_counts()["missing"] == 2 * 32 and model.head.in_features == 2 * 32
    trained = robustmm.train(model, samples, samples, epochs=1, batch_size=6, lr=1e-2, progress_bar=False,
                             out_dir=tmp_path / "run")
    assert any(token.abs().sum() > 0 for token in trained.missing.values())  # the missing tokens learned
    loaded = robustmm.load_model(tmp_path / "run" / "model")
    torch.testing.assert_close(loaded.predict(samples), trained.predict(samples))
    with pytest.raises(TypeError, match="has no option norm"):
        robustmm.build_model(example_method, encoders=encoders, num_classes=3, norm=1.0)
