"""Entry points of an installed package extend the registries: names are listed without importing the code, which
is imported on first use; a saved model records where an outside plug-in lives, and loading without it says how
to make it known."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import robustmm
from robustmm.contract import every_pattern
from robustmm.data.registry import DATASETS
from robustmm.registry import FUSIONS, PLUGINS, outside_modules

pytestmark = pytest.mark.usefixtures("one_thread")

SOURCE = textwrap.dedent('''
    """A plug-in, a fusion and a dataset class of a package outside robustmm, declared as entry points only."""
    from dataclasses import dataclass

    import torch

    from robustmm.fusions import Fusion
    from robustmm.model import Plugin


    @dataclass
    class QuietConfig:
        weight: float = 0.1


    class Quiet(Plugin):
        """Penalises large fused class features."""

        config_class = QuietConfig

        def auxiliary_losses(self, features, availability, batch):
            return {"quiet": (sum(c.pow(2).mean() for c in features.cls.values()), self.config.weight)}


    class MaxPool(Fusion):
        """Elementwise maximum over the visible modalities' features."""

        @property
        def out_features(self):
            return max(self.in_features.values())

        def forward(self, features, visible):
            shown = [f.masked_fill(~visible[m][:, None], float("-inf")) for m, f in features.items()]
            return torch.stack(shown).max(0).values


    class Toy:
        """A dataset reader stand-in."""
''')


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A package with a module and its metadata (what pip writes: METADATA, entry_points.txt) on the path."""
    site = tmp_path / "site"
    info = site / "outside_parts-0.1.dist-info"
    info.mkdir(parents=True)
    (site / "outside_parts.py").write_text(SOURCE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-parts\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[robustmm.plugins]\nquiet = outside_parts:Quiet\n\n[robustmm.fusions]\nmax_pool = outside_parts:MaxPool\n\n"
        "[robustmm.datasets]\ntoy = outside_parts:Toy\n"
        "broken = outside_parts_missing:Nothing\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    PLUGINS.entries.pop("quiet", None)
    FUSIONS.entries.pop("max_pool", None)
    DATASETS.entries.pop("toy", None)
    sys.modules.pop("outside_parts", None)


def test_entry_points_are_listed_unimported_and_loaded_on_first_use(installed):
    assert "quiet" in PLUGINS.names() and {"toy", "broken"} <= set(DATASETS.names())
    assert "outside_parts" not in sys.modules
    assert PLUGINS.summary("quiet") == "Penalises large fused class features."  # read from the source file
    assert PLUGINS.source("quiet") == "outside_parts:Quiet" and PLUGINS.source("mwam") is None
    toy = DATASETS.get("toy")
    assert toy.__name__ == "Toy" and toy.name == "toy" and "outside_parts" in sys.modules
    assert "outside_parts" in outside_modules()  # what a spawned worker imports
    with pytest.raises(ValueError, match=r"dataset 'broken': entry point broken = outside_parts_missing:Nothing "
                                         r"\(group robustmm.datasets\) failed to import"):
        DATASETS.get("broken")


def test_an_outside_plugin_trains_saves_its_source_and_is_named_when_unknown(installed, tiny_encoders, tmp_path):
    encoders = {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}
    model = robustmm.build_model("baseline", encoders=encoders, num_classes=3, quiet=True, quiet_weight=0.5)
    batch = model.collate(every_pattern(["image", "text"]))
    out = model.train()(batch)
    assert out.loss_weights == {"quiet": 0.5} and torch.isfinite(out.losses["quiet"])
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "robustmm_config.json").read_text())
    assert saved["sources"] == {"quiet": "outside_parts:Quiet"} and saved["plugins"] == {"quiet": {"weight": 0.5}}
    loaded = robustmm.load_model(tmp_path / "m")
    torch.testing.assert_close(loaded.eval()(batch).logits, model.eval()(batch).logits)
    saved["plugins"], saved["sources"] = {"absent": {}}, {"absent": "absent_package:Absent"}
    (tmp_path / "m" / "robustmm_config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError) as refused:
        robustmm.load_model(tmp_path / "m")
    message = str(refused.value)
    assert "plug-in 'absent' is not known in this process, which it records as absent_package:Absent" in message
    assert "group robustmm.plugins" in message and "--import absent_package" in message
    assert "damaged" not in message


def test_an_outside_fusion_is_swapped_in_recorded_and_loads_in_a_fresh_process_only_when_known(
    installed, tiny_encoders, tmp_path
):
    assert "max_pool" in FUSIONS.names() and FUSIONS.summary("max_pool").startswith("Elementwise maximum")
    encoders = {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}
    model = robustmm.build_model("baseline", encoders=encoders, num_classes=3, fusion="max_pool").eval()
    samples = every_pattern(["image", "text"], 1)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "robustmm_config.json").read_text())
    assert saved["fusion"] == "max_pool" and saved["sources"] == {"max_pool": "outside_parts:MaxPool"}
    torch.save(model.predict(samples), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import importlib, sys, torch
        import robustmm
        from robustmm.contract import every_pattern
        try:
            robustmm.load_model({str(tmp_path / "m")!r})
        except ValueError as error:
            print("REFUSED", error)
        sys.path.insert(0, {str(installed)!r})
        importlib.invalidate_caches()
        loaded = robustmm.load_model({str(tmp_path / "m")!r})  # the installed entry point makes it known
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        got = loaded.predict(every_pattern(["image", "text"], 1))  # this process may use another thread count:
        print("SAME", torch.allclose(got, expected, rtol=1e-5, atol=1e-6))  # its sums round differently (~1e-8)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(robustmm.__file__).parent.parent)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REFUSED" in done.stdout and "fusion 'max_pool' is not known in this process" in done.stdout
    assert "records as outside_parts:MaxPool" in done.stdout and "--import outside_parts" in done.stdout
    assert "SAME True" in done.stdout


def test_every_command_takes_import():
    import argparse

    from robustmm.cli import build_parser

    def leaves(parser, path=()):
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions:
            yield path, parser
        for action in actions:
            for name, command in action.choices.items():
                yield from leaves(command, (*path, name))

    found = dict(leaves(build_parser()))
    assert {("train",), ("evaluate",), ("demo",), ("check-method",), ("data", "prepare")} <= set(found)
    for path, parser in found.items():
        assert any("--import" in a.option_strings for a in parser._actions), path
