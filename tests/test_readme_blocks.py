"""Every Python block of the README runs: the walk-through and "Adding a method" blocks in their own tests, every
other block here, with tiny stand-in encoders where it names hub ids and the samples it assumes."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")

README = Path(__file__).resolve().parent.parent / "README.md"


def blocks_not_run_elsewhere() -> list[str]:
    """The README's Python blocks but the walk-through's (test_walkthrough.py) and the method example's
    (test_readme_method.py)."""
    text = README.read_text()
    walkthrough = re.search(r"<!-- walkthrough:python -->\n```python\n(.*?)```", text, re.S).group(1)
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    return [b for b in blocks if b != walkthrough and "@robustmm.register_method(" not in b]


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
