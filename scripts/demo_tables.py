"""Markdown tables of demo results (`robustmm demo --out DIR`), as BENCHMARKS.md quotes them.

    .venv/bin/python scripts/demo_tables.py results/demo results/demo-image-text-audio
    .venv/bin/python scripts/demo_tables.py --rows cmpt results/demo results/demo-cmpt-align-weight-0 ...
    .venv/bin/python scripts/demo_tables.py --compute results/demo-all

Each cell is the accuracy, mean ± SD over seeds, with its ratio to the Bayes limit; the best method of a
scenario is in bold. `--rows cmpt` makes one row per results folder (an ablation) instead of one table each.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def stats(result: dict) -> dict:
    table: dict = {}
    for run in result["runs"]:
        table.setdefault((run["scenario"], run["method"]), []).append(run["accuracy"])
    return {k: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in table.items()}


def cell(mean: float, sd: float, limit: float, bold: bool = False) -> str:
    text = f"{mean:.3f} ± {sd:.3f} ({mean / limit:.0%})"
    return f"**{text}**" if bold else text


def by_method(result: dict) -> str:
    methods, summary = result["config"]["methods"], stats(result)
    lines = ["| scenario | Bayes limit | Bayes on these test samples | " + " | ".join(methods) + " |",
             "| --- | --- | --- |" + " --- |" * len(methods)]
    for s in result["scenarios"]:
        best = max(summary[s["name"], m][0] for m in methods)
        cells = [cell(*summary[s["name"], m], s["bayes_accuracy"], summary[s["name"], m][0] == best) for m in methods]
        limits = f"{s['bayes_accuracy']:.3f} | {s['bayes_accuracy_test']:.3f}"
        lines.append(f"| {s['name']} | {limits} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def by_folder(folders: list[Path], method: str) -> str:
    results = {folder: json.loads((folder / "results.json").read_text()) for folder in folders}
    scenarios = next(iter(results.values()))["scenarios"]
    lines = ["| run | " + " | ".join(s["name"] for s in scenarios) + " |", "| --- |" + " --- |" * len(scenarios)]
    for folder, result in results.items():
        summary = stats(result)
        cells = [cell(*summary[s["name"], method], s["bayes_accuracy"]) for s in scenarios]
        lines.append(f"| {folder.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compute(result: dict) -> str:
    """Per method: trainable parameters and training seconds per epoch (median over seeds: each worker's first
    run also pays its warm-up), also relative to the first method (the demo's `baseline`). The runs trained side
    by side, one core each, so their times compare."""
    methods, epochs = result["config"]["methods"], result["config"]["epochs"]
    runs = {(r["method"], r["seed"]): r for r in result["runs"]}
    seconds = {m: [r["train_seconds"] for (n, _), r in runs.items() if n == m] for m in methods}
    per_epoch = {m: statistics.median(seconds[m]) / epochs for m in methods}
    lines = ["| method | trainable parameters | training s / epoch | relative to " + methods[0] + " |",
             "| --- | --- | --- | --- |"]
    for m in methods:
        params = next(r["trainable_parameters"] for (n, _), r in runs.items() if n == m)
        lines.append(f"| {m} | {params:,} | {per_epoch[m]:.1f} | {per_epoch[m] / per_epoch[methods[0]]:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--rows", metavar="METHOD", help="one row per folder for this method")
    parser.add_argument("--compute", action="store_true", help="trainable parameters and time per epoch instead")
    args = parser.parse_args()
    if args.compute:
        for folder in args.folders:
            print(compute(json.loads((folder / "results.json").read_text())))
        return
    if args.rows:
        print(by_folder(args.folders, args.rows))
        return
    for folder in args.folders:
        result = json.loads((folder / "results.json").read_text())
        print(f"{folder} ({result['wall_seconds']} s, precision {result['config']['precision']})\n")
        print(by_method(result) + "\n")


if __name__ == "__main__":
    main()
