"""The README's walk-through on one's own data, run as written: the command-line block, then the Python block."""

import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from robustmm.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
README = Path(__file__).resolve().parent.parent / "README.md"


def block(marker: str) -> str:
    """The fenced code block that follows `<!-- walkthrough:<marker> -->` in the README."""
    found = re.search(rf"<!-- walkthrough:{marker} -->\n```\w+\n(.*?)\n```", README.read_text(), re.S)
    assert found, f"README has no walk-through block {marker!r}"
    return found.group(1)


def commands(text: str) -> list[list[str]]:
    """Each command line of a bash block (continuations joined, comments dropped) as argv."""
    return [shlex.split(line, comments=True) for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_command_line_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    steps = commands(block("cli"))
    assert [argv[:2] for argv in steps] == [["robustmm", "data"], ["robustmm", "train"], ["robustmm", "evaluate"],
                                           ["robustmm", "calibrate"], ["robustmm", "report"], ["robustmm", "predict"]]
    for argv in steps:
        main(argv[1:])  # in this process: the libraries load once
    evaluation = json.loads(Path("runs/my_data/evaluation.json").read_text())
    scores = {row["name"]: row["metrics"]["accuracy"] for row in evaluation["scenarios"]}
    assert scores["complete"] > 0.4 and len(scores) == 21  # chance is 1/8; complete, 2 missing, 2 x 9 sweep rates
    assert set(json.loads(Path("runs/my_data/calibration.json").read_text())["patterns"]) == {
        "photo+caption", "photo", "caption"
    }
    assert Path("report/report.html").is_file() and len(list(Path("report/figures").glob("*.png"))) == 5
    rows = list(csv.DictReader(open("predictions.csv")))
    assert len(rows) == 12 and all(row["error"] == "" and row["prediction"] for row in rows)
    assert {row["modalities"] for row in rows} == {"photo+caption", "photo", "caption"}
    assert "predicted 12 of 12 rows" in capsys.readouterr().err


def test_the_python_walkthrough_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(block("python"), "README walk-through", "exec"), {})
    records = [json.loads(line) for line in Path("predictions.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all("error" not in r and r["temperature"] > 0 for r in records)
    assert {r["modalities"] for r in records} == {"photo+caption", "photo", "caption"}
    scenarios = json.loads(Path("report-notebook/tables/scenarios.json").read_text())
    assert [row["scenario"] for row in scenarios] == ["complete", "photo missing", "caption missing"]
    assert Path("report-notebook/report.html").is_file()
