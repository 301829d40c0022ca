"""`robustmm demo --quick`: every method trained and scored against the Bayes limit, results file and plot."""

import json

import pytest

from robustmm.cli import main
from robustmm.demo import job_threads


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
    assert result["above_bayes"] == []  # beating the limit beyond sampling error would mean a leak
    complete = {r["method"]: r["accuracy"] for r in runs if r["scenario"] == "complete"}
    assert min(complete.values()) > 0.4  # chance is 1/8
    assert result["wall_seconds"] > 0
    assert (tmp_path / "accuracy.png").stat().st_size > 10_000
    table = capsys.readouterr().out
    assert "Bayes" in table and "image missing" in table


@pytest.mark.parametrize(
    "jobs, workers, cores, expected",
    [(9, 2, 2, [1] * 8 + [2]), (3, 2, 2, [1, 1, 2]), (4, 2, 2, [1] * 4), (8, 3, 6, [2] * 6 + [3, 3]), (2, 1, 2, [2, 2])],
)
def test_the_last_partial_round_of_runs_takes_the_idle_cores(jobs, workers, cores, expected):
    assert job_threads(jobs, workers, cores) == expected
