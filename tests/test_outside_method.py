"""A method written outside the package (`examples/late_token`), installed with its entry point, goes through
`train`, `evaluate`, `report`, `predict`, `check-method` and the demo, each in a process of its own; without the
entry point, a fresh process is told how to make it known, and `--import` / `imports=[...]` make it so."""

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from layouts import train_command, write_generic, write_image

EXAMPLE = Path(__file__).parents[1] / "examples" / "late_token"


def python(*argv, path: list[Path], timeout: int = 300) -> subprocess.CompletedProcess:
    """`python ARGV` in a new process with `path` in front of PYTHONPATH."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([*map(str, path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=env)


def robustmm(*argv, path: list[Path]) -> subprocess.CompletedProcess:
    return python("-m", "robustmm.cli", *argv, path=path)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example installed (pip, no dependencies, no build isolation: offline and fast) into a folder of its own,
    which the processes put on their path: an install like any other, without touching the test environment."""
    root = tmp_path_factory.mktemp("late_token")
    source = shutil.copytree(EXAMPLE, root / "source")  # the build writes beside the sources
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                           "--target", str(root / "site"), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "site"


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """The example's module alone on a path, with no package metadata: known only when imported by name."""
    folder = tmp_path_factory.mktemp("bare")
    shutil.copy(EXAMPLE / "late_token.py", folder)
    return folder


@pytest.fixture(scope="module")
def command(tiny_encoders, tmp_path_factory):
    """`robustmm train` of late_token on a tiny image+text dataset, into the run directory given."""
    data = write_generic(tmp_path_factory.mktemp("data"), {"image": "image", "text": "text"}, ("cat", "dog", "bird"),
                         {"train": 12, "val": 6, "test": 6}, missing={"text": 3})
    return lambda run_dir, *extra: train_command(data, tiny_encoders, epochs=1)(run_dir, "--method", "late_token",
                                                                                   *extra)


@pytest.fixture(scope="module")
def run(installed, command, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "run"
    done = robustmm(*command(run_dir), path=[installed])
    assert done.returncode == 0, done.stderr[-3000:]
    return run_dir


def test_an_installed_method_is_listed_without_importing_it(installed):
    listed = robustmm("methods", path=[installed])
    assert listed.returncode == 0 and "[outside: late_token:LateToken]" in listed.stdout
    script = "import sys, robustmm; print('late_token' in robustmm.list_methods(), 'late_token' in sys.modules)"
    done = python("-c", script, path=[installed])
    assert done.stdout.split() == ["True", "False"], done.stderr[-3000:]


def test_an_installed_method_trains_and_its_run_records_where_it_lives(run):
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["sources"] == {"late_token": "late_token:LateToken"}
    saved = json.loads((run / "model" / "robustmm_config.json").read_text())
    assert saved["method"] == "late_token" and saved["sources"] == {"late_token": "late_token:LateToken"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["method"] == "late_token" and 0 <= metrics["test"]["metrics"]["accuracy"] <= 1


def test_evaluate_calibrate_report_and_predict_read_the_run_in_new_processes(installed, run, tmp_path):
    done = robustmm("evaluate", run, "--scenarios", "complete,missing", path=[installed])
    assert done.returncode == 0, done.stderr[-3000:]
    assert {row["name"] for row in json.loads((run / "evaluation.json").read_text())["scenarios"]} == {
        "complete", "image missing", "text missing"}
    done = robustmm("calibrate", run, path=[installed])
    assert done.returncode == 0 and (run / "calibration.json").is_file(), done.stderr[-3000:]
    done = robustmm("report", run, "--out", tmp_path / "report", path=[installed])
    assert done.returncode == 0, done.stderr[-3000:]
    scenarios = json.loads((tmp_path / "report" / "tables" / "scenarios.json").read_text())
    assert [row["scenario"] for row in scenarios] == ["complete", "image missing", "text missing"]
    assert all("late_token" in row for row in scenarios) and (tmp_path / "report" / "report.html").is_file()
    write_image(tmp_path / "in" / "a.png", 0)
    requests = tmp_path / "in" / "new.csv"
    with open(requests, "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "image", "text"], ["r0", "a.png", "a cat"], ["r1", "", "a dog"]])
    done = robustmm("predict", run, "--input", requests, "--out", tmp_path / "out.jsonl", path=[installed])
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["r0", "r1"] and all(r["prediction"] in ("cat", "dog", "bird")
                                                              for r in records)


def test_an_imported_method_trains_and_a_run_naming_it_does_not_import_it(bare, command, tmp_path):
    """`train --import` records the module in the run's config; `evaluate` on the run does not import it on the
    file's say, but names what to pass."""
    run = tmp_path / "run"
    done = robustmm(*command(run, "--import", "late_token"), path=[bare])
    assert done.returncode == 0, done.stderr[-3000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["imports"] == ["late_token"]
    done = robustmm("evaluate", run, path=[bare])
    assert done.returncode == 2
    assert "'late_token' is not known in this process, which it records as late_token:LateToken" in done.stderr
    assert "--import late_token" in done.stderr and "entry point (group robustmm.methods)" in done.stderr
    assert "damaged" not in done.stderr
    assert robustmm("evaluate", run, "--import", "late_token", path=[bare]).returncode == 0


def test_load_model_in_a_new_process_imports_only_what_it_is_told(bare, run):
    script = textwrap.dedent(f"""
        import robustmm
        try:
            robustmm.load_model({str(run / "model")!r})
        except ValueError as error:
            print("refused:", error)
        model = robustmm.load_model({str(run / "model")!r}, imports=["late_token"])
        print("loaded", type(model).__name__, model.method)
    """)
    done = python("-c", script, path=[bare])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused:" in done.stdout and "imports=[...]" in done.stdout and "damaged" not in done.stdout
    assert done.stdout.strip().endswith("loaded LateToken late_token")


def test_the_demo_trains_an_imported_method_in_its_spawned_workers(bare, tmp_path):
    """Two workers, spawned: each imports the module the command line named before it builds the method."""
    done = robustmm("demo", "--quick", "--methods", "late_token,baseline", "--workers", "2", "--epochs", "1",
                    "--train-size", "32", "--test-size", "40", "--batch-size", "16", "--no-progress",
                    "--import", "late_token", path=[bare])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "late_token (seed 0): complete" in done.stdout and "baseline (seed 0): complete" in done.stdout


def test_its_author_runs_the_contract_on_it(installed):
    done = robustmm("check-method", "late_token:LateToken", path=[installed])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all 6 checks passed" in done.stdout and "late_token:LateToken" in done.stdout
