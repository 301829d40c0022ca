"""`robustmm demo --quick`: every method trained and scored against the Bayes limit, results file and plot; its
runs are the cells of the shipped demo sweep."""

import json

import pytest

from robustmm.cli import main
from robustmm.cores import job_threads
from robustmm.demo import DemoConfig, bayes_correct_on_test, benchmark_of, demo_sweep, mcnemar_above


def test_quick_demo_writes_results_within_the_bayes_limit(tmp_path, capsys):
    main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    result = json.loads((tmp_path / "results.json").read_text())
    assert [s["name"] for s in result["scenarios"]] == ["complete", "text missing", "image missing"]
    assert [s["available"] for s in result["scenarios"]] == [["image", "text"], ["image"], ["text"]]
    bayes = {s["name"]: s["bayes_accuracy"] for s in result["scenarios"]}
    assert bayes["complete"] > max(bayes["text missing"], bayes["image missing"])
    runs = result["runs"]
    assert {(r["method"], r["seed"], r["scenario"]) for r in runs} == {
        (m, 0, s) for m in ("baseline", "dropout", "cmpt") for s in bayes
    }
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in runs)
    assert result["above_bayes"] == []  # beating the Bayes classifier beyond chance would mean a leak
    assert all(0.0 <= r["p_above_bayes"] <= 1.0 and "correct" not in r for r in runs)
    assert all(0.0 < s["bayes_accuracy_test"] <= 1.0 for s in result["scenarios"])
    complete = {r["method"]: r["accuracy"] for r in runs if r["scenario"] == "complete"}
    assert min(complete.values()) > 0.4  # chance is 1/8
    assert result["wall_seconds"] > 0
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000 and (tmp_path / "missing-rate.png").is_file()
    table = json.loads((tmp_path / "report" / "tables" / "scenarios.json").read_text())  # the report, with the limits
    assert [(row["scenario"], row["bayes_limit"]) for row in table] == [(s, bayes[s]) for s in bayes]
    assert all(row["cmpt"]["mean"] == complete["cmpt"] for row in table if row["scenario"] == "complete")
    assert (tmp_path / "report" / "report.html").is_file()
    for run in runs:  # each run is an ordinary run directory, a cell of the demo sweep, that scored test once
        run_dir = tmp_path / "cells" / f"seed={run['seed']},method={run['method']}"
        assert run["run_dir"] == str(run_dir) and (run_dir / "model").is_dir()
        evaluated = json.loads((run_dir / "evaluation.json").read_text())
        assert run["accuracy"] == next(r for r in evaluated["scenarios"] if r["name"] == run["scenario"])["metrics"]["accuracy"]
        assert set(json.loads((run_dir / "metrics.json").read_text())) >= {"val", "test"}
        assert (run_dir / "predictions.npz").is_file()
    for sweep in result["sweeps"]:  # 0% missing is the complete scenario, 100% the one-missing one
        ends = {r["scenario"]: r["accuracy"] for r in runs if (r["method"], r["seed"]) == (sweep["method"], sweep["seed"])}
        assert sweep["accuracy"][0] == pytest.approx(ends["complete"], abs=1e-6)
        assert sweep["accuracy"][-1] == pytest.approx(ends[f"{sweep['modality']} missing"], abs=1e-6)
    assert {(s["modality"], s["method"]) for s in result["sweeps"]} == {
        (m, method) for m in ("image", "text") for method in ("baseline", "dropout", "cmpt")
    }
    table = capsys.readouterr().out
    assert "Bayes" in table and "image missing" in table
    # A rerun on the same folder with the same settings trains nothing: every cell is done
    from robustmm.demo import earlier_demo
    from robustmm.sweep.run import run_cells

    before = {p: p.stat().st_mtime_ns for p in tmp_path.glob("cells/*/evaluation.json")}
    lines = []
    states = run_cells(demo_sweep(DemoConfig.quick(), tmp_path), "local", 2, progress=False, log=lines.append)
    assert {state for state, _ in states.values()} == {"done"} and "3 done, 0 to run" in lines[-1]
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("cells/*/evaluation.json")} == before
    assert earlier_demo(tmp_path)


def test_a_demo_folder_of_other_settings_is_refused_before_training(tmp_path):
    config = DemoConfig.quick(methods=["baseline"], train_size=16, test_size=8)
    cell = demo_sweep(config, tmp_path).cells[0]
    cell.run_dir.mkdir(parents=True)
    (cell.run_dir / "config.yaml").write_text(cell.config.to_yaml())
    with pytest.raises(ValueError, match="holds a run of another config"):
        demo_sweep(DemoConfig.quick(methods=["baseline"], train_size=16, test_size=8, epochs=1), tmp_path)


@pytest.mark.parametrize(
    "jobs, workers, cores, expected",
    [(9, 2, 2, [1] * 8 + [2]), (3, 2, 2, [1, 1, 2]), (4, 2, 2, [1] * 4), (8, 3, 6, [2] * 6 + [3, 3]), (2, 1, 2, [2, 2])],
)
def test_the_last_partial_round_of_runs_takes_the_idle_cores(jobs, workers, cores, expected):
    assert job_threads(jobs, workers, cores) == expected


def test_the_bayes_classifier_on_the_default_test_set():
    """The generator's own classifier on the demo's 1000 test samples (the population limits are 0.886 / 0.734 /
    0.706: the sample's figures differ from them by sampling error only)."""
    config = DemoConfig()
    correct, _ = bayes_correct_on_test(config, benchmark_of(config).scenarios())
    assert {name: round(float(c.mean()), 3) for name, c in correct.items()} == {
        "complete": 0.897, "text missing": 0.749, "image missing": 0.734,
    }


def test_mcnemar_flags_a_model_that_beats_the_bayes_classifier_on_the_same_samples():
    import numpy as np

    bayes = np.array([True] * 700 + [False] * 300)
    assert mcnemar_above(bayes.copy(), bayes) == 1.0  # never disagree: no evidence
    better = bayes.copy()
    better[700:760] = True  # right on 60 samples where Bayes is wrong, wrong nowhere else
    assert mcnemar_above(better, bayes) < 1e-6
    swapped = bayes.copy()
    swapped[700:730], swapped[:30] = True, False  # as often right as Bayes: no evidence either way
    assert mcnemar_above(swapped, bayes) > 0.4


def test_with_three_modalities_the_cells_are_evaluated_on_every_availability_pattern(tmp_path):
    """The demo's scenarios are the benchmark's seven patterns; `patterns` evaluates each on every test sample."""
    from robustmm.data import get_dataset
    from robustmm.evaluation import PatternScenario, parse_scenarios

    config = DemoConfig(modalities=["image", "text", "audio"])
    modalities = {m: m for m in config.modalities}
    chosen = {item.name: item for item in parse_scenarios(["patterns"], modalities)}
    assert set(chosen) == {s["name"] for s in benchmark_of(config).scenarios()}
    test = get_dataset("synthetic", tmp_path, "test", modalities="image,text,audio", train_size=2, val_size=2,
                       test_size=5)
    for scenario in benchmark_of(config).scenarios():
        item = chosen[scenario["name"]]
        if isinstance(item, PatternScenario):
            visible = item.view(test, "test").table.visible
            assert visible.tolist() == [[m in scenario["available"] for m in config.modalities]] * 5
