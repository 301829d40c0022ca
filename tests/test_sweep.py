"""`robustmm sweep` end to end on a tiny image+text dataset with tiny encoders (each cell trains one epoch in
seconds): the grid and its checks, the tables against the cells' own files, select on validation, resume after
a SIGKILL, a failed cell, two sweeps on one folder, and both executors (local processes side by side; SLURM
through submitit's real SLURM executor on a fake sbatch/srun/sacct on PATH, `fake_slurm.py`)."""

import csv
import fcntl
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
import yaml
from fake_slurm import fake_slurm_env
from layouts import write_generic

from test_faults import full_disk

from robustmm.cli import main
from robustmm.registry import METHODS
from robustmm.sweep.spec import cell_names, load_sweep, shipped_sweeps

pytestmark = pytest.mark.usefixtures("one_thread")
SIZES = {"train": 8, "val": 6, "test": 6}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return write_generic(root, {"image": "image", "text": "text"}, ("cat", "dog"), SIZES, missing={"text": 3})


@pytest.fixture(scope="module")
def write_sweep(data, tiny_encoders):
    """A sweep file over the tiny dataset: `grid` and any other sections given; returns its path."""

    def write(path: Path, grid: dict, **sections) -> Path:
        spec = {
            "dataset": {"name": "generic", "root": str(data)},
            "protocol": {"train_missing_rate": 0.5, "val_missing_rate": 0.5, "test_missing_rate": 0.5},
            "model": {"encoders": {"image": tiny_encoders["image"], "text": tiny_encoders["text"]}},
            "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "warmup_epochs": 0, "num_workers": 0},
            "evaluation": {"scenarios": ["complete", "missing"]},
            "grid": grid,
            "report": False,
            "out": str(path.parent / path.stem),
            **sections,
        }
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


METHODS_AND_SEEDS = {"model.method": ["baseline", "cmpt"], "train.seed": [0, 1]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, write_sweep):
    """baseline and cmpt x seeds 0, 1, run in this process, with the report."""
    path = write_sweep(tmp_path_factory.mktemp("sweep") / "two.yaml", METHODS_AND_SEEDS, report=True)
    main(["sweep", str(path), "--no-progress"])
    return path, path.parent / "two"


def error_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ----- the grid and its checks ---------------------------------------------------------------------------------


def test_every_combination_is_a_cell_and_dry_run_lists_them_without_training(write_sweep, tmp_path, capsys):
    grid = {"model.method": ["baseline", "cmpt"], "train.lr": [0.01, 0.1], "train.seed": [0, 1, 2]}
    path = write_sweep(tmp_path / "grid.yaml", grid)
    sweep = load_sweep(str(path))
    assert len(sweep.cells) == 12
    assert {(c.config.model.method, c.config.train.lr, c.config.train.seed) for c in sweep.cells} == {
        (m, lr, s) for m in grid["model.method"] for lr in grid["train.lr"] for s in grid["train.seed"]
    }
    assert sweep.cells[0].name == "method=baseline,lr=0.01,seed=0"
    assert all(Path(c.config.out) == tmp_path / "grid" / "cells" / c.name for c in sweep.cells)
    main(["sweep", str(path), "--dry-run"])
    out = capsys.readouterr().out
    assert out.count("[pending]") == 12 and "cmpt on generic" in out
    assert not (tmp_path / "grid").exists()
    assert cell_names({"a.seed": [1], "b.seed": [2], "c.lr": [0.1]})[0][0] == "a.seed=1,b.seed=2,lr=0.1"


def test_set_on_a_grid_key_replaces_its_values(write_sweep, tmp_path):
    path = write_sweep(tmp_path / "grid.yaml", {"model.method": ["baseline", "cmpt"], "train.seed": [0, 1]})
    sweep = load_sweep(str(path), ["train.seed=[5]", "model.method=cmpt", "train.lr=0.1"])
    assert [(c.name, c.config.train.seed, c.config.train.lr) for c in sweep.cells] == [("method=cmpt,seed=5", 5, 0.1)]


def test_all_lists_every_method(write_sweep, tmp_path):
    sweep = load_sweep(str(write_sweep(tmp_path / "all.yaml", {"model.method": "all"})))
    assert [c.config.model.method for c in sweep.cells] == METHODS.names()


@pytest.mark.parametrize("grid, extra, message", [
    ({"model.method": []}, {}, "model.method lists no values, so the grid expands to zero cells"),
    ({}, {}, "grid: expected a mapping"),
    ({"train.lr": [0.01, "fast"]}, {}, "train.lr: expected a number, got 'fast'"),
    ({"train.lrr": [0.1]}, {}, "unknown key 'train.lrr'"),
    ({"model.method": ["cmpt", "nosuch"]}, {}, "nosuch"),
    ({"model.options.no_such_option": [1]}, {}, "model.options.no_such_option: no method has this option"),
    ({"model.method": ["cmpt", "cmpt"]}, {}, "lists \"cmpt\" more than once"),
    ({"train.lr": [0.1]}, {"select": {"over": ["train.lr"], "metric": "test/accuracy"}}, "never on test"),
    ({"train.seed": [0, 1]}, {"select": {"over": ["train.seed"], "metric": "val/accuracy"}}, "not a setting"),
    ({"train.lr": [0.1]}, {"select": {"over": ["train.lr"], "metric": "val/f1_macro"}}, "the cell scores val/accuracy"),
    ({"train.lr": [0.1]}, {"evaluation": {"scenarios": ["sweep:audio"]}}, "cannot sweep audio"),
])  # fmt: skip
def test_a_bad_sweep_is_refused_before_any_work_naming_what_is_wrong(write_sweep, tmp_path, capsys, grid, extra,
                                                                    message):
    path = write_sweep(tmp_path / "bad.yaml", grid, **extra)
    assert message in error_of(["sweep", str(path)], capsys)
    assert not (tmp_path / "bad").exists()


def test_every_shipped_sweep_expands_to_every_method_and_the_readme_shows_example(capsys):
    main(["sweep", "--list"])
    listed = capsys.readouterr().out
    for name in shipped_sweeps():
        assert name in listed
        sweep = load_sweep(name, check=False)  # the paper's datasets are not here: keys, types and methods only
        methods = {cell.config.model.method for cell in sweep.cells}
        assert methods == set(METHODS.names()) or name in ("example", "demo"), name
    assert {"table1_map", "table2_missing", "fig2_rates", "table2_tuned"} <= set(shipped_sweeps())
    assert load_sweep("table2_tuned", check=False).select.over == ["train.lr"]
    assert load_sweep("table1_map", check=False).cells[0].config.evaluation.scenarios[0] == "grid"
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"<!-- sweep:example -->\n```yaml\n(.*?)\n```", readme, re.S)[1]
    assert yaml.safe_load(block) == yaml.safe_load(resources.files("robustmm").joinpath("sweeps/example.yaml")
                                                    .read_text())


# ----- the results ---------------------------------------------------------------------------------------------


def evaluations(folder: Path) -> dict[str, dict]:
    """Cell name -> scenario -> accuracy, from the run directories' own evaluation.json."""
    return {
        cell.name: {row["name"]: row["metrics"]["accuracy"] for row in
                    json.loads((cell / "evaluation.json").read_text())["scenarios"]}
        for cell in sorted((folder / "cells").iterdir())
    }


def test_the_tables_hold_mean_and_sd_over_seeds_of_the_cells_with_best_and_second_marked(finished):
    _, folder = finished
    scores = evaluations(folder)
    assert len(scores) == 4
    rows = list(csv.DictReader(open(folder / "table.csv")))
    assert [row["method"] for row in rows] == ["baseline", "cmpt"] and all(r["seeds"] == "0,1" for r in rows)
    markdown = (folder / "table.md").read_text()
    tex = (folder / "table.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    for scenario in ("complete", "image missing", "text missing"):
        means = {}
        for row in rows:
            values = [scores[f"method={row['method']},seed={seed}"][scenario] for seed in (0, 1)]
            means[row["method"]] = statistics.fmean(values)
            assert float(row[f"{scenario} accuracy mean %"]) == pytest.approx(100 * statistics.fmean(values), abs=1e-3)
            assert float(row[f"{scenario} accuracy sd %"]) == pytest.approx(100 * statistics.stdev(values), abs=1e-3)
            text = f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.stdev(values):.2f}"
            assert text in markdown and text.replace("±", "$\\pm$") in tex
        best = max(means, key=means.get)
        ranks = {row["method"]: row[f"{scenario} accuracy rank"] for row in rows}
        assert ranks[best] == "0" and sorted(ranks.values()) == ["0", "1"]
    results = json.loads((folder / "results.json").read_text())
    assert [c["state"] for c in results["cells"]] == ["done"] * 4
    assert {c["name"]: {k: v["accuracy"] for k, v in c["figures"]["scenarios"].items()} for c in results["cells"]} \
        == scores
    assert (folder / "report" / "report.html").is_file()
    assert json.loads((folder / "report" / "tables" / "scenarios.json").read_text())


def test_a_cell_scores_its_test_split_in_one_pass_and_keeps_its_predictions(finished):
    """metrics.json's `test` comes from the evaluation's pass and equals what `robustmm train` scores itself;
    predictions.npz holds each scenario's per-sample logits, in the split's order, that give evaluation.json's
    figures."""
    from robustmm.config import read_run_config
    from robustmm.evaluation import open_split, read_predictions, score
    from robustmm.metrics import compute_metrics
    from robustmm.serialisation import load_model

    _, folder = finished
    for run_dir in sorted((folder / "cells").iterdir()):
        config = read_run_config(run_dir / "config.yaml")
        test = open_split(config.dataset, "test")
        view = test.with_protocol(config.protocol, cache_dir=run_dir / "missing_tables")
        alone = score(load_model(run_dir / "model"), view, config.train.metrics, precision=config.train.precision)
        test_entry = json.loads((run_dir / "metrics.json").read_text())["test"]
        assert test_entry["metrics"] == pytest.approx(alone["metrics"], abs=1e-6)
        assert (test_entry["protocol"], test_entry["samples"], test_entry["patterns"]) == (
            alone["protocol"], alone["samples"], alone["patterns"])
        logits, labels, ids = read_predictions(run_dir)
        assert ids == list(test.ids)
        evaluated = json.loads((run_dir / "evaluation.json").read_text())["scenarios"]
        assert list(logits) == [row["name"] for row in evaluated]
        for row in evaluated:
            assert compute_metrics(logits[row["name"]], labels, False, ["accuracy"]) == row["metrics"]


def test_a_rerun_skips_finished_cells_and_status_shows_them_done(finished, capsys):
    path, folder = finished
    logs = {log: log.read_text() for log in (folder / "logs").glob("*.log")}
    table = (folder / "table.md").read_text()
    main(["sweep", str(path), "--no-progress"])
    assert "4 done, 0 to run" in capsys.readouterr().out
    assert {log: log.read_text() for log in (folder / "logs").glob("*.log")} == logs  # no cell ran again
    assert (folder / "table.md").read_text() == table
    main(["sweep", "status", str(folder)])
    assert capsys.readouterr().out.strip().endswith("0 pending, 0 running, 4 done, 0 failed")


def test_select_keeps_per_method_the_setting_best_on_validation_and_names_it(write_sweep, tmp_path):
    grid = {"model.method": ["baseline"], "train.lr": [1e-6, 0.05], "train.seed": [0]}
    path = write_sweep(tmp_path / "tuned.yaml", grid, select={"over": ["train.lr"], "metric": "val/accuracy"})
    main(["sweep", str(path), "--no-progress"])
    folder = tmp_path / "tuned"
    val = {lr: json.loads((folder / "cells" / f"method=baseline,lr={lr},seed=0" / "metrics.json").read_text())
           ["val"]["metrics"]["accuracy"] for lr in ("1e-06", "0.05")}
    chosen = max(val, key=val.get)  # the first on a tie, as the grid lists them
    results = json.loads((folder / "results.json").read_text())
    assert results["selected"] == [f"method=baseline,lr={chosen},seed=0"]
    assert results["selection"][0]["chosen"] == {"train.lr": float(chosen)}
    (row,) = list(csv.DictReader(open(folder / "table.csv")))
    assert row["lr (selected on val/accuracy)"] == str(float(chosen))
    test = evaluations(folder)[f"method=baseline,lr={chosen},seed=0"]
    assert float(row["complete accuracy mean %"]) == pytest.approx(100 * test["complete"], abs=1e-3)
    assert "lr (selected on val/accuracy)" in (folder / "table.md").read_text()


# ----- faults --------------------------------------------------------------------------------------------------


def sweep_process(path: Path, *extra: str, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "robustmm", "sweep", str(path), "--no-progress", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def wait_for(condition, seconds: float = 120, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        assert process is None or process.poll() is None, "the sweep ended early"
        time.sleep(0.05)


def test_a_sweep_killed_and_run_again_gives_the_table_of_an_uninterrupted_one(finished, write_sweep, tmp_path):
    """SIGKILL once the first cell is done and the second has started; the rerun skips the first and resumes the
    second."""
    path = write_sweep(tmp_path / "two.yaml", METHODS_AND_SEEDS)
    folder = tmp_path / "two"
    process = sweep_process(path)
    second = folder / "cells" / "method=baseline,seed=1"
    wait_for(lambda: (second / "config.yaml").exists(), process=process)
    process.kill()
    process.wait()
    assert not (second / "evaluation.json").exists()
    main(["sweep", str(path), "--no-progress"])
    assert evaluations(folder) == evaluations(finished[1])
    table = (folder / "table.md").read_text().replace(str(path), "SWEEP")
    assert table == (finished[1] / "table.md").read_text().replace(str(finished[0]), "SWEEP")


def test_a_failed_cell_leaves_the_others_going_and_the_exit_status_names_it(write_sweep, tmp_path, tiny_encoders,
                                                                           capsys):
    """Two local workers side by side; one cell's encoder folder does not exist, which only its training finds."""
    grid = {"model.encoders.text": [tiny_encoders["text"], str(tmp_path / "no_encoder")]}
    path = write_sweep(tmp_path / "fails.yaml", grid)
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--jobs", "2", "--no-progress"])
    assert exit_info.value.code == 1
    bad = "text=" + str(tmp_path / "no_encoder").replace("/", "-")
    assert f"1 of 2 cells failed: {bad}" in capsys.readouterr().err
    results = json.loads((tmp_path / "fails" / "results.json").read_text())
    assert [c["state"] for c in results["cells"]] == ["done", "failed"]
    main(["sweep", "status", str(tmp_path / "fails")])
    status = capsys.readouterr().out
    assert f"{bad}  failed" in status and "no_encoder" in status and "    | " in status  # its log's last lines
    assert status.strip().endswith("1 done, 1 failed")


def test_a_full_disk_fails_the_cell_it_hits_and_a_rerun_finishes_it_without_training_again(write_sweep, tmp_path,
                                                                                         capsys):
    path = write_sweep(tmp_path / "full.yaml", {"train.seed": [0]})
    target = tmp_path / "full" / "cells" / "seed=0" / "evaluation.json"
    with full_disk(target), pytest.raises(SystemExit) as exit_info:
        main(["sweep", str(path), "--no-progress"])
    assert exit_info.value.code == 1
    assert f"could not write {target}: No space left on device" in capsys.readouterr().out
    assert not target.exists() and not list(target.parent.glob(".evaluation.json.*"))
    main(["sweep", str(path), "--no-progress"])
    assert target.is_file()
    assert "is complete" in (tmp_path / "full" / "logs" / "seed=0.log").read_text()  # trained once


def test_two_sweeps_on_one_folder_do_not_both_write_a_cell(write_sweep, tmp_path, capsys):
    path = write_sweep(tmp_path / "busy.yaml", {"train.seed": [0]})
    run_dir = tmp_path / "busy" / "cells" / "seed=0"
    run_dir.mkdir(parents=True)
    with open(run_dir / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1, started earlier")
        held.flush()
        with pytest.raises(SystemExit):
            main(["sweep", str(path), "--no-progress"])
        assert "is in use by another robustmm train (pid 1, started earlier)" in capsys.readouterr().out
        main(["sweep", "status", str(tmp_path / "busy")])
        assert "seed=0  running  pid 1, started earlier" in capsys.readouterr().out
    assert not (run_dir / "config.yaml").exists()


def test_sigterm_ends_the_sweep_and_its_workers_and_a_rerun_resumes(write_sweep, tmp_path, capsys):
    """SIGTERM while two local workers hold their cells: the workers end with the sweep, no orphan trains on."""
    from robustmm.sweep.cell import is_locked

    path = write_sweep(tmp_path / "term.yaml", {"train.seed": [0, 1]})
    process = sweep_process(path, "--jobs", "2")
    cells = [tmp_path / "term" / "cells" / f"seed={seed}" for seed in (0, 1)]
    wait_for(lambda: all(is_locked(cell) for cell in cells), process=process)
    workers = [int((cell / ".lock").read_text().split(",")[0].split()[1]) for cell in cells]
    assert process.pid not in workers
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM

    def ended(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"

    wait_for(lambda: all(map(ended, workers)), seconds=15)
    main(["sweep", str(path), "--no-progress"])
    assert "2 to run" in capsys.readouterr().out
    assert all((cell / "evaluation.json").is_file() for cell in cells)


# ----- the slurm executor --------------------------------------------------------------------------------------


def test_slurm_cells_run_as_a_job_array_through_submitit(write_sweep, tmp_path, monkeypatch, capsys):
    """submitit's SlurmExecutor writes the sbatch script and submits it to the fake sbatch, which runs each array
    task; the sweep watches them with sacct and writes the table from the cells."""
    for key, value in fake_slurm_env(tmp_path / "slurm").items():
        monkeypatch.setenv(key, value)
    path = write_sweep(tmp_path / "array.yaml", {"train.seed": [0, 1]}, slurm={
        "partition": "debug", "time_min": 10, "cpus_per_task": 1, "mem_gb": 2, "array_parallelism": 2,
        "setup": ["export OMP_NUM_THREADS=1"]})
    main(["sweep", str(path), "--executor", "slurm", "--no-progress"])
    script = (tmp_path / "slurm" / "state" / "1000.sbatch").read_text()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --partition=debug", "#SBATCH --time=10", "#SBATCH --mem=2GB",
                 "#SBATCH --cpus-per-task=1", "#SBATCH --ntasks-per-node=1", "export OMP_NUM_THREADS=1"):
        assert line in script
    assert "srun" in script and "submitit.core._submit" in script
    results = json.loads((tmp_path / "array" / "results.json").read_text())
    assert [c["state"] for c in results["cells"]] == ["done", "done"]
    assert "seeds" in (tmp_path / "array" / "table.md").read_text()


def test_a_slurm_cell_requeued_runs_the_same_call_again():
    from robustmm.sweep.executors import SlurmCell

    cell = SlurmCell()
    again = cell.checkpoint("job")
    assert again.function is cell and again.args == ("job",)


def test_without_slurm_the_slurm_executor_says_so(write_sweep, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    path = write_sweep(tmp_path / "none.yaml", {"train.seed": [0]})
    assert "no SLURM on this machine (sbatch, srun, sacct not on PATH)" in error_of(
        ["sweep", str(path), "--executor", "slurm"], capsys)


def test_the_demos_runs_are_the_cells_of_the_shipped_demo_sweep(tmp_path):
    """`robustmm demo`'s settings and the shipped sweep file agree: every default run of the demo is the sweep's
    cell of the same name with the same resolved config (the demo's quick test checks that its results are the
    cells' evaluation.json)."""
    from robustmm.config import config_differences
    from robustmm.data.synthetic import demo_encoder_paths
    from robustmm.demo import DemoConfig, demo_sweep

    paths = demo_encoder_paths()
    overrides = [f"model.encoders.{m}={paths[m]}" for m in ("image", "text")]
    sweep = load_sweep("demo", overrides, str(tmp_path))
    demo = demo_sweep(DemoConfig(), tmp_path)
    assert [cell.name for cell in demo.cells] == [cell.name for cell in sweep.cells]
    assert [cell.name for cell in sweep.cells][:4] == ["seed=0,method=baseline", "seed=0,method=dropout",
                                                       "seed=0,method=cmpt", "seed=1,method=baseline"]
    for ours, theirs in zip(demo.cells, sweep.cells):
        assert config_differences(ours.config, theirs.config, ()) == []
