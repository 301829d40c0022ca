"""A sweep's results from its cells' run directories: `select`, the table (markdown, CSV, LaTeX booktabs),
results.json and the report.

Rows are the combinations of the grid's keys other than the seed and the selected keys; columns are the
scenarios of the cells' evaluation; each entry is the mean ± SD (n - 1) over the seeds of the first metric of
`train.metrics`, in %, the best and second best of each column marked. Everything is read from the run
directories, so a rerun after a kill writes the same table as an uninterrupted sweep.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

from ..atomic import atomic_write_text
from ..metrics import mean_sd
from .cell import EVALUATION
from .spec import SEED_KEY, Cell, Sweep, cell_names, value_label

TABLES = ("table.md", "table.csv", "table.tex")


def cell_figures(cell: Cell) -> dict | None:
    """Validation and test metrics of the selected checkpoint and the metrics of each scenario; None until the
    cell is evaluated."""
    run_dir = cell.run_dir
    if not (run_dir / EVALUATION).is_file():
        return None
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluation = json.loads((run_dir / EVALUATION).read_text())
    return {
        "selected_epoch": metrics["selected"]["epoch"],
        "val": metrics["val"]["metrics"],
        "test": metrics["test"]["metrics"],
        "scenarios": {row["name"]: row["metrics"] for row in evaluation["scenarios"]},
    }


def _key(values: dict, keys: list[str]) -> tuple:
    return tuple(json.dumps(values[key], sort_keys=True) for key in keys)


def chosen_cells(sweep: Sweep, figures: dict[str, dict]) -> tuple[list[Cell], dict[tuple, dict]]:
    """The cells that `select` keeps (all cells without it), and per row key the chosen values of `over`: in each
    combination of the other keys (seeds apart), the values whose finished cells have the best mean validation
    metric; the first in grid order on a tie."""
    if sweep.select is None:
        return list(sweep.cells), {}
    over, metric = sweep.select.over, sweep.select.metric_name
    rows = [key for key in sweep.grid if key != SEED_KEY and key not in over]
    candidates: dict[tuple, dict[tuple, list[float]]] = {}
    for cell in sweep.cells:
        scores = candidates.setdefault(_key(cell.values, rows), {}).setdefault(_key(cell.values, over), [])
        if cell.name in figures:
            scores.append(figures[cell.name]["val"][metric])
    chosen = {}
    for row, options in candidates.items():
        scored = {option: statistics.fmean(scores) for option, scores in options.items() if scores}
        if scored:
            best = max(scored, key=lambda option: scored[option])  # max keeps the first of equal scores
            chosen[row] = {"values": dict(zip(over, map(json.loads, best))), "val": scored}
    kept = [cell for cell in sweep.cells if (entry := chosen.get(_key(cell.values, rows)))
            and _key(cell.values, over) == _key(entry["values"], over)]
    return kept, chosen


def table_rows(sweep: Sweep, figures: dict[str, dict]) -> tuple[str, list[str], list[dict]]:
    """(metric, scenarios, rows): a row per combination of the row keys, mean ± SD over its finished seeds."""
    kept, chosen = chosen_cells(sweep, figures)
    over = sweep.select.over if sweep.select else []
    keys = [key for key in sweep.grid if key != SEED_KEY and key not in over]
    metric = sweep.cells[0].config.train.metrics[0]
    scenarios: list[str] = []
    for cell in kept:
        for name in figures.get(cell.name, {}).get("scenarios", {}):
            if name not in scenarios:
                scenarios.append(name)
    grouped: dict[tuple, list[Cell]] = {}
    for cell in kept:
        grouped.setdefault(_key(cell.values, keys), []).append(cell)
    rows = []
    for row_key, cells in grouped.items():
        done = [figures[c.name] for c in cells if c.name in figures]
        entries = {}
        for scenario in scenarios:
            values = [f["scenarios"][scenario][metric] for f in done if scenario in f["scenarios"]]
            if values:
                mean, sd = mean_sd(values)
                entries[scenario] = {"mean": mean, "sd": sd, "n": len(values)}
        rows.append({
            "values": {key: cells[0].values[key] for key in keys},
            "selected": chosen.get(row_key, {}).get("values", {}),
            "seeds": [c.values.get(SEED_KEY, c.config.train.seed) for c in cells if c.name in figures],
            "cells": len(cells),
            "scenarios": entries,
        })
    for scenario in scenarios:
        ranked = sorted((r for r in rows if scenario in r["scenarios"]),
                        key=lambda r: -r["scenarios"][scenario]["mean"])
        for rank, row in enumerate(ranked if len(ranked) > 1 else []):
            row["scenarios"][scenario]["rank"] = rank
    return metric, scenarios, rows


def _short(sweep: Sweep) -> dict[str, str]:
    """Grid key -> its column title (the names that cell names use)."""
    names = cell_names({key: [None] for key in sweep.grid})[0][0].split(",")
    return {key: name.split("=")[0] for key, name in zip(sweep.grid, names)}


def _plain(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _entry(entry: dict | None) -> str:
    return "" if entry is None else f"{100 * entry['mean']:.2f} ± {100 * entry['sd']:.2f}"


def _columns(sweep: Sweep, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Titles and values of the row-naming columns: the grid keys, the chosen values, the seeds."""
    short = _short(sweep)
    keys = list(rows[0]["values"]) if rows else []
    over = sweep.select.over if sweep.select else []
    titles = [short[k] for k in keys] + [f"{short[k]} (selected on {sweep.select.metric})" for k in over] + ["seeds"]
    values = []
    for row in rows:
        seeds = ",".join(map(str, row["seeds"])) + ("" if len(row["seeds"]) == row["cells"] else
                                                     f" ({len(row['seeds'])} of {row['cells']})")
        values.append([_plain(row["values"][k]) for k in keys] + [_plain(row["selected"].get(k, "")) for k in over]
                      + [seeds])
    return titles, values


def markdown(sweep: Sweep, metric: str, scenarios: list[str], rows: list[dict]) -> str:
    titles, names = _columns(sweep, rows)
    header = [*titles, *scenarios]
    lines = []
    for row, named in zip(rows, names):
        cells = []
        for scenario in scenarios:
            entry = row["scenarios"].get(scenario)
            text = _entry(entry) or "—"
            rank = (entry or {}).get("rank")
            cells.append(f"**{text}**" if rank == 0 else f"_{text}_" if rank == 1 else text)
        lines.append([*named, *cells])
    rule = "|" + "|".join("---" for _ in header) + "|"
    body = ["| " + " | ".join(line) + " |" for line in lines]
    note = (f"{metric} in %, mean ± SD over seeds; **best** and _second best_ per scenario. "
            f"{sweep.source}, {len(sweep.cells)} cells.")
    return "\n".join(["| " + " | ".join(header) + " |", rule, *body, "", note, ""])


def csv_text(sweep: Sweep, metric: str, scenarios: list[str], rows: list[dict]) -> str:
    titles, names = _columns(sweep, rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([*titles, *(f"{s} {metric} {part}" for s in scenarios for part in ("mean %", "sd %", "rank"))])
    for row, named in zip(rows, names):
        entries = [row["scenarios"].get(s) for s in scenarios]
        writer.writerow([*named, *(value for e in entries for value in (
            ("", "", "") if e is None else (f"{100 * e['mean']:.4f}", f"{100 * e['sd']:.4f}", e.get("rank", "")))
        )])
    return buffer.getvalue()


TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    return "".join(TEX_SPECIAL.get(c, c) for c in text)


def latex(sweep: Sweep, metric: str, scenarios: list[str], rows: list[dict]) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}): best in bold, second best underlined."""
    titles, names = _columns(sweep, rows)
    lines = [f"% {_tex(metric)} in %, mean $\\pm$ SD over seeds; best bold, second best underlined",
             "\\begin{tabular}{" + "l" * len(titles) + "r" * len(scenarios) + "}", "\\toprule",
             " & ".join(_tex(t) for t in [*titles, *scenarios]) + " \\\\", "\\midrule"]
    for row, named in zip(rows, names):
        cells = []
        for scenario in scenarios:
            entry = row["scenarios"].get(scenario)
            if entry is None:
                cells.append("--")
                continue
            text = f"{100 * entry['mean']:.2f} $\\pm$ {100 * entry['sd']:.2f}"
            rank = entry.get("rank")
            cells.append(f"\\textbf{{{text}}}" if rank == 0 else f"\\underline{{{text}}}" if rank == 1 else text)
        lines.append(" & ".join([*(_tex(n) for n in named), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}", ""]
    return "\n".join(lines)


def write_results(sweep: Sweep, states: dict[str, tuple[str, str]]) -> dict:
    """results.json and the three tables in the sweep folder; returns what results.json holds."""
    figures = {cell.name: found for cell in sweep.cells if (found := cell_figures(cell)) is not None}
    metric, scenarios, rows = table_rows(sweep, figures)
    kept, chosen = chosen_cells(sweep, figures)
    results = {
        **sweep.to_dict(),
        "metric": metric,
        "scenarios": scenarios,
        "cells": [{"name": c.name, "values": c.values, "run_dir": str(c.run_dir), "state": states[c.name][0],
                   "detail": states[c.name][1], "figures": figures.get(c.name)} for c in sweep.cells],
        "selected": [c.name for c in kept] if sweep.select else None,
        "selection": [{"row": dict(zip([k for k in sweep.grid if k != SEED_KEY and k not in sweep.select.over],
                                       map(json.loads, key))), "chosen": entry["values"],
                       "val_mean": {",".join(map(str, map(json.loads, o))): v for o, v in entry["val"].items()}}
                      for key, entry in chosen.items()] if sweep.select else None,
        "rows": rows,
    }
    sweep.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep.out / "results.json", json.dumps(results, indent=2))
    for name, render in zip(TABLES, (markdown, csv_text, latex)):
        atomic_write_text(sweep.out / name, render(sweep, metric, scenarios, rows))
    return results


def report_groups(sweep: Sweep, figures: dict[str, dict]) -> dict[str, list[Path]]:
    """Folder name -> run directories for `robustmm report`, which compares methods (their seeds) of one config:
    one report per combination of the row keys other than the method ('' when there is one)."""
    kept, _ = chosen_cells(sweep, figures)
    over = sweep.select.over if sweep.select else []
    keys = [key for key in sweep.grid if key not in (SEED_KEY, "model.method") and key not in over]
    short = _short(sweep)
    groups: dict[str, list[Path]] = {}
    for cell in kept:
        if cell.name in figures:
            label = ",".join(f"{short[k]}={value_label(cell.values[k])}" for k in keys)
            groups.setdefault(label, []).append(cell.run_dir)
    return groups


def write_reports(sweep: Sweep, log=print) -> list[Path]:
    """OUT/report/report.html (OUT/report/<group>/ for several groups) through `robustmm report`'s Python entry."""
    from ..report import write_report

    figures = {cell.name: found for cell in sweep.cells if (found := cell_figures(cell)) is not None}
    groups = report_groups(sweep, figures)
    pages = []
    for label, run_dirs in groups.items():
        folder = sweep.out / "report" / label if len(groups) > 1 else sweep.out / "report"
        pages.append(write_report(run_dirs, folder, log=log))
    return pages
