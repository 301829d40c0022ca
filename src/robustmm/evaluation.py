"""Scenario evaluation of trained runs: one model, the test split under many missing-modality conditions.

The model of a run was selected on validation during training; here it is only scored. Each scenario is the
run's protocol with the test split's missing type and rate replaced (`Scenario.protocol`), so every method and
seed sees the same samples lose the same modalities. Every modality of every test sample is encoded once, and
each scenario only fuses what its missing table leaves (`MultimodalModel.logits_by_availability`): a sweep of
twenty scenarios costs one pass over the test set. Several runs of one config with different seeds are
aggregated to mean ± SD (sample standard deviation, n - 1) per scenario, as the paper reports.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from .checks import load_json
from .config import EXECUTION_KEYS, RUN_CONFIG, ConfigError, DatasetSection, config_differences, read_run_config
from .data.protocol import (
    MissingTable, Scenario, bind_kind, complete_scenario, map_grid, modality_missing_scenarios, rate_sweep,
)
from .data.registry import get_dataset
from .metrics import compute_metrics, default_metrics, mean_sd, per_class_scores
from .atomic import atomic_write, atomic_write_text
from .model import MultimodalModel
from .precision import resolve_precision
from .serialisation import load_model
from .training import predict_logits, scenario_logits

SCENARIO_KINDS = ("complete", "missing", "patterns", "sweep", "grid")
GRID_RATES = (0.7,)
"""The MAP protocol's missing rate (eta = 70% in the paper's Tables 1 and 8)."""
SEED_KEYS = ("out", "train.seed", *EXECUTION_KEYS)
"""Runs whose configs differ only in these keys are seeds of one experiment."""


def open_split(section: DatasetSection, split: str):
    return get_dataset(section.name, section.root, split, **section.options)


def dataset_metrics(dataset) -> list[str]:
    """The reader's own metric list (e.g. AUROC first for Hateful Memes), else the task's default."""
    return list(getattr(dataset, "metrics", None) or default_metrics(dataset.multilabel))


def inference_device(accelerator: str = "auto") -> torch.device:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def score(
    model: MultimodalModel, view, metrics: Sequence[str], batch_size: int = 32, num_workers: int = 0,
    precision: str = "32-true",
) -> dict:
    """Metrics, per-class scores and sample counts per availability pattern of `model` on a protocol view."""
    logits, labels = predict_logits(model, view, batch_size, num_workers, precision)
    return summarize(view, logits, labels, metrics, model.config.multilabel)


def summarize(view, logits: torch.Tensor, labels: torch.Tensor, metrics: Sequence[str], multilabel: bool) -> dict:
    return {
        "split": view.split,
        "protocol": view.table.protocol_hash,
        "samples": len(view),
        "patterns": {name: entry["samples"] for name, entry in view.table.pattern_counts().items()},
        "metrics": compute_metrics(logits, labels, multilabel, metrics),
        "per_class_metric": "f1" if multilabel else "recall",
        "per_class": dict(zip(view.class_names, per_class_scores(logits, labels, multilabel))),
    }


def visible_masks(table) -> dict[str, torch.Tensor]:
    """Modality -> [N] bools: what each sample shows under a missing table."""
    return {m: torch.from_numpy(table.visible[:, i].copy()) for i, m in enumerate(table.modalities)}


# ----- scenarios -----------------------------------------------------------------------------------------------


def parse_scenarios(
    specs: Sequence[str], modalities: Mapping[str, str], rates: Sequence[float] | None = None, both_ratio: float = 0.5
) -> list[Scenario]:
    """Scenarios from names: `complete`, `missing` (each modality entirely missing, paper Table 2),
    `sweep:<modality>` (100% of the others + x% of it, Fig. 2/3; `sweep` alone: every modality; a kind such as
    `sweep:image` sweeps the dataset's one image modality) and `grid` (the MAP test cells: each modality or both
    missing at each rate, Tables 1/8); `patterns`: every availability pattern, each on every sample (`complete`,
    each modality missing, and with three or more modalities `<a>+<b> only` and `<a> only`, `PatternScenario`).
    `modalities` maps the dataset's modalities to their kinds; `rates` are missing rates for sweeps and the grid.
    Scenarios that two specs share are kept once."""
    names = list(modalities)
    chosen: dict[str, Scenario] = {}
    for spec in specs:
        kind, _, argument = spec.strip().partition(":")
        if kind not in SCENARIO_KINDS:
            raise ValueError(f"unknown scenario {spec!r}; use {', '.join(SCENARIO_KINDS)} (sweep:<modality>)")
        if argument and kind != "sweep":
            raise ValueError(f"scenario {kind!r} takes no argument, got {spec!r}")
        if kind == "complete":
            found = [complete_scenario(names)]
        elif kind == "missing":
            found = modality_missing_scenarios(names)
        elif kind == "patterns":
            found = [complete_scenario(names), *modality_missing_scenarios(names), *pattern_scenarios(names)]
        elif kind == "sweep":
            swept = [bind_kind(argument, modalities, "sweep each by name (sweep:<name>)")] if argument else names
            unknown = [m for m in swept if m not in modalities]
            if unknown:
                raise ValueError(f"cannot sweep {', '.join(unknown)}: the dataset has {', '.join(names)}")
            kept = {} if rates is None else {"kept_fractions": [1.0 - rate for rate in rates]}
            found = [item for m in swept for item in rate_sweep(names, m, **kept)]
        else:
            found = map_grid(names, rates or GRID_RATES, both_ratio=both_ratio)[0][1]
        for item in found:
            chosen.setdefault(item.name, item)
    return list(chosen.values())


@dataclass(frozen=True)
class PatternScenario:
    """Every test sample shows the modalities of `pattern` only: two or more modalities missing at once, which a
    missing protocol (one modality lost per selected sample) cannot express. A sample that has none of them keeps
    what it has."""

    name: str
    pattern: tuple[str, ...]
    missing_type: str
    rate: float = 1.0

    def view(self, dataset, split: str) -> "PatternView":
        return PatternView(dataset, self, split)


def pattern_scenarios(modalities: Sequence[str]) -> list[PatternScenario]:
    """The availability patterns with two or more of `modalities` missing, largest first: `a+b only`, `a only`."""
    found = []
    for size in range(len(modalities) - 2, 0, -1):
        for pattern in itertools.combinations(modalities, size):
            missing = "+".join(m for m in modalities if m not in pattern)
            found.append(PatternScenario(f"{'+'.join(pattern)} only", pattern, missing))
    return found


class PatternView:
    """A split under a `PatternScenario`: what `summarize` and `scenario_logits` read of a protocol view."""

    def __init__(self, dataset, scenario: PatternScenario, split: str):
        modalities = list(dataset.modalities)
        present = dataset.present_table().astype(bool)
        keep = np.array([m in scenario.pattern for m in modalities])
        lacking = ~(present & keep).any(1)  # has none of the pattern's modalities: keeps its own
        dropped = present & ~keep & ~lacking[:, None]
        digest = f"pattern:{'+'.join(scenario.pattern)}"
        self.dataset, self.split = dataset, split
        self.table = MissingTable(digest, split, tuple(dataset.ids), tuple(modalities), present, dropped,
                                  kept_last=int(lacking.sum()))

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.dataset.class_names


def evaluate_run(
    run_dir: str | Path,
    scenarios: Sequence[str] | None = None,
    rates: Sequence[float] | None = None,
    root: str | None = None,
    batch_size: int | None = None,
    split: str = "test",
    datasets: dict | None = None,
    log=None,
    precision: str = "auto",
) -> dict:
    """Score the model of one run on its test split under each scenario (default: the config's `evaluation`).

    `root` reads the data from another folder than the one the run was trained on; `split` picks another
    labelled split the reader has (e.g. Hateful Memes' test_unseen), under the test rate of each scenario;
    `datasets` caches opened splits between runs of one experiment. `precision` is chosen for the machine that
    evaluates (`auto`), not taken from the one that trained, and is recorded with the results.
    """
    return scenario_pass(run_dir, scenarios, rates, root, batch_size, split, datasets, log, precision)[0]


def scenario_pass(
    run_dir: str | Path,
    scenarios: Sequence[str] | None = None,
    rates: Sequence[float] | None = None,
    root: str | None = None,
    batch_size: int | None = None,
    split: str = "test",
    datasets: dict | None = None,
    log=None,
    precision: str = "auto",
    run_test: bool = False,
) -> tuple[dict, dict[str, torch.Tensor], torch.Tensor, list[str]]:
    """`evaluate_run`'s result, and the logits of each scenario, the labels and the sample ids (in the split's
    order) from its one encoding pass. `run_test` adds the run's own test condition (its protocol on the test split, what
    metrics.json's `test` holds) to that pass, as the result's `run_test`."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir / RUN_CONFIG)
    if not (run_dir / "model").is_dir():
        raise FileNotFoundError(f"{run_dir} has no model yet: finish the run with the same `robustmm train` command")
    section = config.dataset if root is None else replace(config.dataset, root=str(Path(root).resolve()))
    key = json.dumps([section.name, section.root, section.options, split], sort_keys=True, default=str)
    datasets = {} if datasets is None else datasets
    if key not in datasets:
        datasets[key] = open_split(section, split)
    test = datasets[key]
    chosen = parse_scenarios(
        scenarios or config.evaluation.scenarios,
        test.modalities,
        config.evaluation.rates if rates is None else rates,
        config.protocol.both_ratio,
    )
    model = load_model(run_dir / "model").to(inference_device(config.train.accelerator))
    precision = resolve_precision(precision, config.train.accelerator)
    views = {
        item.name: item.view(test, split) if isinstance(item, PatternScenario)
        else test.with_protocol(item.protocol(config.protocol, split), cache_dir=run_dir / "missing_tables")
        for item in chosen
    }
    masks = {name: visible_masks(view.table) for name, view in views.items()}
    if run_test:
        if split != "test" or root is not None:
            raise ValueError("run_test scores the run's own test split: it takes neither another split nor root")
        run_view = test.with_protocol(config.protocol, cache_dir=run_dir / "missing_tables")
        masks[RUN_TEST] = visible_masks(run_view.table)
    if log:
        log(f"{run_dir}: {len(chosen)} scenarios, one encoding pass over {len(test)} samples")
    logits, labels = scenario_logits(
        model,
        test,
        masks,
        batch_size or config.evaluation.batch_size,
        config.train.num_workers,
        precision,
    )
    multilabel = model.config.multilabel
    results = [
        {
            "name": item.name,
            "missing_type": item.missing_type,
            "rate": item.rate,
            **summarize(views[item.name], logits[item.name], labels, config.train.metrics, multilabel),
        }
        for item in chosen
    ]
    result = {
        "run": str(run_dir),
        "dataset": config.dataset.name,
        "method": config.model.method,
        "seed": config.train.seed,
        "precision": precision,
        "scenarios": results,
    }
    if run_test:
        result[RUN_TEST] = summarize(run_view, logits.pop(RUN_TEST), labels, config.train.metrics, multilabel)
    return result, logits, labels, list(test.ids)


RUN_TEST = "run_test"
"""The key of the run's own test condition in a `scenario_pass` with `run_test`."""
PREDICTIONS = "predictions.npz"


def write_predictions(path: Path, logits: dict[str, torch.Tensor], labels: torch.Tensor, ids: Sequence[str]) -> None:
    """Per-sample test logits of each scenario ([scenarios, N, classes], float32), the labels and the sample ids,
    written atomically: what per-sample comparisons (a McNemar test, mixed missing rates) read without running
    the model again."""

    def write(temp):
        with open(temp, "wb") as handle:
            np.savez_compressed(handle, scenarios=np.array(list(logits)), labels=labels.numpy(),
                                logits=torch.stack(list(logits.values())).float().numpy(), ids=np.array(list(ids)))

    atomic_write(path, write)


def read_predictions(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]:
    """(scenario -> logits, labels, ids) from RUN_DIR/predictions.npz."""
    path = Path(run_dir) / PREDICTIONS
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: the run's evaluation did not write predictions "
                                "(a sweep's cells do)")
    with np.load(path) as stored:
        logits = torch.from_numpy(stored["logits"])
        return ({str(name): logits[i] for i, name in enumerate(stored["scenarios"])},
                torch.from_numpy(stored["labels"]), [str(i) for i in stored["ids"]])


# ----- several seeds -------------------------------------------------------------------------------------------


def _mean_sd(values: list[float]) -> dict:
    mean, sd = mean_sd(values)
    return {"mean": mean, "std": sd, "values": values}


def aggregate(runs: list[dict]) -> list[dict]:
    """Per scenario: mean and SD over runs of every metric and per-class score."""
    rows = []
    for index, first in enumerate(runs[0]["scenarios"]):
        entries = [run["scenarios"][index] for run in runs]
        rows.append({
            "name": first["name"],
            "protocol": first["protocol"],
            "samples": first["samples"],
            "patterns": first["patterns"],
            "runs": len(entries),
            "metrics": {metric: _mean_sd([e["metrics"][metric] for e in entries]) for metric in first["metrics"]},
            "per_class_metric": first["per_class_metric"],
            "per_class": {name: _mean_sd([e["per_class"][name] for e in entries]) for name in first["per_class"]},
        })
    return rows


def evaluate_runs(
    run_dirs: Sequence[str | Path],
    scenarios: Sequence[str] | None = None,
    rates: Sequence[float] | None = None,
    root: str | None = None,
    batch_size: int | None = None,
    split: str = "test",
    log=None,
    precision: str = "auto",
    run_test: bool = False,
    predictions: bool = False,
) -> dict:
    """Evaluate each run and, for several, aggregate them; they must be seeds of one config.

    Each run's results are written to `RUN_DIR/evaluation.json`, last. `run_test` scores the run's own test
    condition in the same pass into metrics.json's `test` (for a run trained with `score_test=False`);
    `predictions` writes each scenario's per-sample logits to `RUN_DIR/predictions.npz` (`write_predictions`).
    """
    if not run_dirs:
        raise ValueError("no run directory given")
    configs = [read_run_config(Path(d) / RUN_CONFIG) for d in run_dirs]
    seeds = [config.train.seed for config in configs]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        listed = ", ".join(map(str, repeated))
        raise ConfigError(f"several runs have seed {listed}: give each run of an experiment once")
    for run_dir, config in zip(run_dirs[1:], configs[1:]):
        differences = config_differences(configs[0], config, SEED_KEYS)
        if differences:
            raise ConfigError(
                f"{run_dir} is not a seed of {run_dirs[0]}: they differ in {'; '.join(differences[:5])}. "
                "Aggregate runs of one config that differ only in train.seed"
            )
    datasets: dict = {}
    runs = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        result, logits, labels, ids = scenario_pass(run_dir, scenarios, rates, root, batch_size, split, datasets,
                                                    log, precision, run_test)
        if predictions:
            write_predictions(run_dir / PREDICTIONS, logits, labels, ids)
        if run_test:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            metrics["test"] = result.pop(RUN_TEST)
            atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
        atomic_write_text(run_dir / "evaluation.json", json.dumps(result, indent=2))
        runs.append(result)
    report = {"runs": runs}
    if len(runs) > 1:
        report["aggregate"] = aggregate(runs)
    return report


RUN_INPUTS = ("config.yaml", "protocol.json", "metrics.json", "calibration.json", "model", "missing_tables",
              "checkpoints")
"""What `robustmm evaluate` and the commands after it read of a run directory: never an output path."""


def is_evaluation_report(path: Path) -> bool:
    """Whether `path` holds a report that `robustmm evaluate --out` writes (a JSON object with its runs)."""
    if path.stat().st_size > 64 << 20:
        return False
    try:
        report = load_json(path.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return isinstance(report, dict) and isinstance(report.get("runs"), list)


def format_table(report: dict) -> str:
    """A markdown table of the scenarios, metrics in %: mean ± SD over runs when there are several."""
    several = "aggregate" in report
    rows = report["aggregate"] if several else report["runs"][0]["scenarios"]
    metrics = list(rows[0]["metrics"])
    header = ["scenario", "samples", *metrics]
    lines = []
    for row in rows:
        if several:
            cells = [f"{100 * v['mean']:.2f} ± {100 * v['std']:.2f}" for v in row["metrics"].values()]
        else:
            cells = [f"{100 * v:.2f}" for v in row["metrics"].values()]
        lines.append([row["name"], str(row["samples"]), *cells])
    runs = report["runs"]
    seeds = ", ".join(str(run["seed"]) for run in runs)
    which = f"{len(runs)} runs (seeds {seeds}), mean ± SD" if several else f"seed {seeds}"
    title = f"{runs[0]['dataset']} · {runs[0]['method']} · {which} · metrics in %"
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines)]

    def render(cells):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([title, "", render(header), rule, *map(render, lines)])


def log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
