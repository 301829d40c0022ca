"""The command line answers without loading the heavy libraries; they load only where a command needs them."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft", "lightning")


def loaded_after(code: str) -> dict:
    """Which heavy libraries a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv", [["--help"], ["train", "--help"], ["demo", "--help"], ["evaluate", "--help"], ["data", "stats", "--help"],
             ["methods"], ["predict", "--help"], ["calibrate", "--help"], ["report", "--help"],
             ["data", "example", "--help"]],
)
def test_help_and_listing_load_no_heavy_library(argv):
    code = f"from robustmm.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert not any(loaded_after(code).values())


def test_import_robustmm_loads_nothing_heavy_and_building_a_model_no_lightning():
    assert not any(loaded_after("import robustmm").values())
    loaded = loaded_after("import robustmm.methods")  # what building a model and predicting need
    assert loaded["torch"] and loaded["peft"] and not loaded["lightning"]
    assert loaded_after("import robustmm\nrobustmm.train")["lightning"] is True


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "robustmm", "methods"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "cmpt" in done.stdout


def test_the_listing_without_import_matches_the_classes():
    """`robustmm methods` reads descriptions from the source; they must be the loaded classes' own."""
    from robustmm.data.registry import DATASETS
    from robustmm.registry import METHODS

    for registry in (METHODS, DATASETS):
        unloaded = {name: registry.summary(name) for name in registry.names()}
        for name in registry.names():
            cls = registry.get(name)
            assert getattr(cls, registry.attribute) == name
            assert unloaded[name] == (cls.__doc__ or "").strip().splitlines()[0]
