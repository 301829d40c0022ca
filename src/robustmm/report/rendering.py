"""The page, the markdown summary and the tables: one self-contained HTML file (figures embedded, the style and
the render check read from the package's `report.css` and `check.js`)."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import statistics
from importlib import resources
from pathlib import Path

from ..atomic import atomic_write, atomic_write_text
from ..data.protocol import SWEEP_RATES
from ..metrics import mean_sd
from .figures import attention_figure, gain_figure, radar_figure, reliability_figure, sweep_figure, tsne_figure
from .loading import ReportData, by_method
from .probes import analyse_models


def asset(name: str) -> str:
    """A file of the page shipped beside this module: `report.css` (its style) and `check.js`, which writes into
    the page whether every figure decoded and was drawn to its last row."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def availability_scenarios(data: ReportData) -> list[str]:
    return list(data.runs[0].scenarios)


def scenario_table(data: ReportData) -> list[dict]:
    rows = []
    for scenario in availability_scenarios(data):
        row = {"scenario": scenario}
        if data.limits:
            row["bayes_limit"] = data.limits.get(scenario)
        for method, runs in by_method(data.runs).items():
            mean, sd = mean_sd([run.scenarios[scenario] for run in runs])
            row[method] = {"mean": mean, "sd": sd, "runs": len(runs)}
        rows.append(row)
    return rows


def ranks(row: dict, methods: list[str]) -> dict[str, int]:
    order = sorted(methods, key=lambda m: -row[m]["mean"])
    return {method: order.index(method) for method in methods}


DEFAULT_GAIN = ("cmpt", "baseline")
"""The per-class gain shown when not told otherwise, where both methods ran: the paper's (Fig. 4)."""
DEFAULT_FOCUS = "cmpt"
"""The method whose first run the t-SNE and attention show when not told otherwise, where it ran."""


def gain_pair(methods: list[str], gain: tuple[str, str] | None = None) -> tuple[str, str] | None:
    """(method, reference) of the per-class gain: `gain` if given, else `DEFAULT_GAIN` where both ran, else the
    last method over the first; None for a single method."""
    if gain is not None:
        unknown = [m for m in gain if m not in methods]
        if len(gain) != 2 or gain[0] == gain[1] or unknown:
            raise ValueError(f"gain: {gain!r} must name two different methods of the report ({', '.join(methods)})")
        return tuple(gain)
    if len(methods) < 2:
        return None
    if all(m in methods for m in DEFAULT_GAIN):
        return DEFAULT_GAIN
    return methods[-1], methods[0]


def focus_method(methods: list[str], focus: str | None = None) -> str:
    """The method whose first run the t-SNE and attention show: `focus` if given, else `DEFAULT_FOCUS` where it
    ran, else the first."""
    if focus is not None:
        if focus not in methods:
            raise ValueError(f"focus: {focus!r} is not a method of the report ({', '.join(methods)})")
        return focus
    return DEFAULT_FOCUS if DEFAULT_FOCUS in methods else methods[0]


def class_gains(data: ReportData, scenario: str, pair: tuple[str, str]) -> list[tuple[str, float]] | None:
    """Per class, the mean score of `pair[0]` minus that of `pair[1]` over seeds, largest first."""
    grouped = by_method(data.runs)
    if not all(scenario in run.per_class for run in data.runs):
        return None
    mean = {m: {c: statistics.fmean(run.per_class[scenario][c] for run in grouped[m]) for c in data.class_names}
            for m in pair}
    return sorted(((c, mean[pair[0]][c] - mean[pair[1]][c]) for c in data.class_names), key=lambda x: -x[1])


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def flat_rows(table: list[dict]) -> list[dict]:
    """Rows of nested dicts as flat CSV rows (`cmpt.mean`, `cmpt.sd`, ...)."""
    flat = []
    for row in table:
        out = {}
        for key, value in row.items():
            if isinstance(value, dict):
                out.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                out[key] = value
        flat.append(out)
    return flat


def write_table(folder: Path, name: str, table: list[dict]) -> None:
    atomic_write_text(folder / f"{name}.json", json.dumps(table, indent=2))
    rows = flat_rows(table)
    header = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(folder / f"{name}.csv", buffer.getvalue())


def html_table(header: list[str], rows: list[list[str]], classes: list[list[str]] | None = None) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = []
    for index, row in enumerate(rows):
        kinds = classes[index] if classes else [""] * len(row)
        cells = "".join(f'<td class="{kind}">{html.escape(cell)}</td>' for cell, kind in zip(row, kinds))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def build_report(data: ReportData, out_dir, log=None, gain: tuple[str, str] | None = None,
                 focus: str | None = None) -> Path:
    """Write `report.html`, `report.md`, `figures/*.png` and `tables/*.{json,csv}` into `out_dir`. `gain`: the
    (method, reference) pair of the per-class gain; `focus`: the method that the t-SNE and attention show
    (defaults: `gain_pair`, `focus_method`), checked before the models run."""
    methods = list(by_method(data.runs))
    pair, focus = gain_pair(methods, gain), focus_method(methods, focus)
    out_dir = Path(out_dir)
    figures_dir, tables_dir = out_dir / "figures", out_dir / "tables"
    figures_dir.mkdir(parents=True, exist_ok=True)
    tables_dir.mkdir(parents=True, exist_ok=True)
    metric = data.runs[0].metric
    scenarios = availability_scenarios(data)
    sections: list[tuple[str, str, list[tuple[str, bytes]], str]] = []  # title, html before, figures, markdown

    table = scenario_table(data)
    write_table(tables_dir, "scenarios", table)
    header = ["scenario", *(["Bayes limit"] if data.limits else []), *methods]
    cells, kinds = [], []
    for row in table:
        rank = ranks(row, methods)
        cells.append([row["scenario"], *([percent(row["bayes_limit"])] if data.limits else []),
                      *(f"{percent(row[m]['mean'])} ± {percent(row[m]['sd'])}" for m in methods)])
        kinds.append(["", *([""] if data.limits else []),
                      *({0: "best", 1: "second"}.get(rank[m], "") if len(methods) > 1 else "" for m in methods)])
    marked = [[f"**{c}**" if k == "best" else f"_{c}_" if k == "second" else c for c, k in zip(r, kr)]
              for r, kr in zip(cells, kinds)]
    seeds = ", ".join(f"{m}: {len(runs)}" for m, runs in by_method(data.runs).items())
    note = (f'<p class="note">{html.escape(metric)} in %, mean ± SD over seeds ({html.escape(seeds)}); '
            "<b>best</b> and <u>second best</u> per scenario.</p>")
    radar = radar_figure(data, scenarios)
    sections.append(("Availability scenarios", html_table(header, cells, kinds) + note,
                     [("radar", radar)] if radar else [], markdown_table(header, marked)))

    sweep = sweep_figure(data)
    if sweep:
        write_table(tables_dir, "sweeps", [
            {"method": run.method, "seed": run.seed, "modality": m, "missing_rate": rate, metric: value}
            for run in data.runs for m, values in run.sweeps.items() for rate, value in zip(SWEEP_RATES, values)
        ])
        sections.append((f"{metric.capitalize()} against the missing rate", "", [("missing-rate", sweep)], ""))

    gains = {s: g for s in scenarios[1:] if pair and (g := class_gains(data, s, pair))}
    if pair and gains:
        write_table(tables_dir, "class_gain", [
            {"scenario": s, "class": c, "gain": g, "method": pair[0], "over": pair[1]} for s, rows in gains.items()
            for c, g in rows
        ])
        sections.append((f"Per-class gain of {pair[0]} over {pair[1]}", "", [("class-gain", gain_figure(gains, pair))],
                         ""))

    if log:
        log("running the models: calibration, timing, t-SNE, attention")
    found = analyse_models(data, focus)
    if "tsne" in found:
        panels, truth = found["tsne"]
        figure = tsne_figure(panels, truth, data.class_names, f"fused features of {found['focus']}, test samples")
        sections.append(("t-SNE of the fused features", "", [("tsne", figure)], ""))
    if "attention" in found:
        images, attention = found["attention"]
        text = (f'<p class="note">{html.escape(found["focus"])}: last layer of the image encoder, mean over heads, '
                "from each token to the patches.</p>")
        sections.append(("Attention over the patches", text, [("attention", attention_figure(images, attention))], ""))

    write_table(tables_dir, "calibration", found["calibration"])
    calibrated = any("temperature" in r for r in found["calibration"])
    header = ["method", "seed", "pattern", "samples", "ECE", *(["temperature", "ECE calibrated"] if calibrated else [])]
    rows = [[r["method"], str(r["seed"]), r["pattern"], str(r["samples"]), f"{r['ece']:.4f}",
             *([f"{r['temperature']:.3f}", f"{r['ece_calibrated']:.4f}"] if "temperature" in r else
               ["", ""] if calibrated else [])] for r in found["calibration"]]
    note = ('<p class="note">Expected calibration error per availability pattern on the test samples (15 bins); '
            "with <code>robustmm calibrate</code>, also after its temperatures.</p>")
    sections.append(("Calibration", html_table(header, rows) + note,
                     [("reliability", reliability_figure(found["diagrams"]))], markdown_table(header, rows)))

    write_table(tables_dir, "compute", found["compute"])
    timed = list(found["compute"][0]["seconds_per_1000"])
    header = ["method", "trainable parameters", "training time (s, mean over seeds)",
              *(f"s / 1000 predictions, {t}" for t in timed)]
    rows = []
    for entry in found["compute"]:
        parts = ", ".join(f"{k} {v:,}" for k, v in entry["parameters"].items() if k != "total")
        seconds = entry["train_seconds"]
        rows.append([entry["method"], parts, "" if seconds is None else f"{seconds:.1f}",
                     *(f"{entry['seconds_per_1000'][t]:.2f}" for t in timed)])
    note = '<p class="note">Prediction times in fp32, batches of 32, on this machine.</p>'
    sections.append(("Compute", html_table(header, rows) + note, [], markdown_table(header, rows)))

    page, summary = [], [f"# {data.title}", ""]
    for title, before, figures, markdown in sections:
        page.append(f"<h2>{html.escape(title)}</h2>{before}")
        summary += [f"## {title}", ""] + ([markdown, ""] if markdown else [])
        for name, content in figures:
            atomic_write(figures_dir / f"{name}.png", lambda temp, content=content: Path(temp).write_bytes(content))
            encoded = base64.b64encode(content).decode()
            page.append(f'<img alt="{name}" src="data:image/png;base64,{encoded}">')
            summary += [f"![{name}](figures/{name}.png)", ""]
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(data.title)}</title>'
        f"<style>{asset('report.css')}</style></head><body><h1>{html.escape(data.title)}</h1>{''.join(page)}"
        f'<p id="render-status" class="note">figures not checked</p><script>{asset("check.js")}</script></body></html>'
    )
    atomic_write_text(out_dir / "report.html", document)
    atomic_write_text(out_dir / "report.md", "\n".join(summary))
    return out_dir / "report.html"
