"""The report's data: scores per run and scenario, and the models, from run directories, the demo's results or
models in memory."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.protocol import SWEEP_RATES
from ..metrics import mean_sd
from ..availability import pattern_name
from ..calibration import CALIBRATION_FILE, present_table, read_temperatures

ANALYSIS_SAMPLES = 300
"""Test samples that the model-based parts (calibration, t-SNE) read at most."""


@dataclass
class RunResult:
    """What the report needs of one trained model: its scores per scenario and where the model is."""

    method: str
    seed: int
    metric: str
    scenarios: dict[str, float]
    """Availability scenario ("complete", "<modality> missing") -> metric."""
    sweeps: dict[str, list[float]] = field(default_factory=dict)
    """Modality -> metric at each of `SWEEP_RATES` of the test samples missing it."""
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    """Scenario -> class -> per-class score (recall, or F1 for multi-label tasks)."""
    model: object = None
    """The loaded model, for the parts that run it."""
    calibration: dict[str, float] = field(default_factory=dict)
    train_seconds: float | None = None
    pattern_logits: dict[str, tuple] | None = None
    """Availability pattern -> (logits, labels) on the test samples, where they are known already (the demo's);
    else the report computes them."""


@dataclass
class ReportData:
    title: str
    modalities: dict[str, str]
    """Modality -> kind."""
    class_names: list[str]
    runs: list[RunResult]
    samples: list[dict]
    """Labelled test samples for the parts that run a model."""
    limits: dict[str, float] = field(default_factory=dict)
    """Scenario -> Bayes-optimal metric, where the data generator knows it."""
    attention_samples: list[dict] | None = None
    """The samples whose attention maps to show; None: the first test samples that have an image."""


def by_method(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for run in runs:
        grouped.setdefault(run.method, []).append(run)
    return grouped


def mean_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.fmean(known) if known else None


def training_seconds(run_dir: Path) -> float | None:
    """Wall time from the first to the last TensorBoard event of each training attempt, summed."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total = None
    for events in sorted(run_dir.glob("tensorboard/version_*/events.out.tfevents.*")):
        times = [event.wall_time for event in EventFileLoader(str(events)).Load()]
        if times:
            total = (total or 0.0) + max(times) - min(times)
    return total


def run_result(run_dir: Path, test, datasets: dict, log=None) -> RunResult:
    """Scores of a run under the availability scenarios and the rate sweeps (one encoding pass over its `test`
    split), with its model."""
    from ..config import RUN_CONFIG, read_run_config
    from ..data.protocol import rate_sweep
    from ..evaluation import evaluate_run
    from ..serialisation import load_model

    config = read_run_config(run_dir / RUN_CONFIG)
    evaluated = evaluate_run(run_dir, ["complete", "missing", "sweep"], SWEEP_RATES, datasets=datasets, log=log)
    rows = {row["name"]: row for row in evaluated["scenarios"]}
    metric = config.train.metrics[0]
    names = list(test.modalities)
    sweeps = {
        m: [rows[s.name]["metrics"][metric] for s in rate_sweep(names, m, [1 - r for r in SWEEP_RATES])]
        for m in names
    } if len(names) > 1 else {}
    availability = ["complete", *(f"{m} missing" for m in names)] if len(names) > 1 else ["complete"]
    calibration = run_dir / CALIBRATION_FILE
    return RunResult(
        method=config.model.method, seed=config.train.seed, metric=metric,
        scenarios={name: rows[name]["metrics"][metric] for name in availability},
        sweeps=sweeps,
        per_class={name: rows[name]["per_class"] for name in availability},
        model=load_model(run_dir / "model"),
        calibration=read_temperatures(calibration) if calibration.is_file() else {},
        train_seconds=training_seconds(run_dir),
    )


def from_runs(run_dirs, max_samples: int = ANALYSIS_SAMPLES, attention_ids=None, log=None) -> ReportData:
    """The report's data from run directories of one dataset (any methods, any seeds); `attention_ids` names the
    test samples whose attention maps to show."""
    from ..config import RUN_CONFIG, config_differences, read_run_config
    from ..evaluation import SEED_KEYS, open_split

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("no run directory given")
    configs = [read_run_config(d / RUN_CONFIG) for d in run_dirs]
    datasets = {(c.dataset.name, c.dataset.root) for c in configs}
    if len(datasets) > 1:
        raise ValueError(f"the runs are of different datasets ({sorted(datasets)}); report one dataset at a time")
    seen, first = {}, {}
    for run_dir, config in zip(run_dirs, configs):
        key = (config.model.method, config.train.seed)
        if key in seen:
            raise ValueError(f"{run_dir} and {seen[key]} are both {key[0]} with seed {key[1]}: give each run once")
        seen[key] = run_dir
        reference = first.setdefault(config.model.method, (run_dir, config))
        differences = config_differences(reference[1], config, SEED_KEYS)
        if differences:
            raise ValueError(f"{run_dir} is not a seed of {reference[0]} ({config.model.method}): they differ in "
                             f"{'; '.join(differences[:5])}; report one config per method")
    test = open_split(configs[0].dataset, "test")
    chosen = None
    if attention_ids:
        positions = {sample_id: index for index, sample_id in enumerate(test.ids)}
        unknown = [sample_id for sample_id in attention_ids if sample_id not in positions]
        if unknown:
            raise ValueError(f"--attention-ids: no test sample has id {', '.join(map(repr, unknown))}")
        chosen = [test[positions[sample_id]] for sample_id in attention_ids]
        images = [m for m, kind in test.modalities.items() if kind == "image"]
        lacking = [s["id"] for s in chosen if not images or s[images[0]] is None]
        if lacking:
            raise ValueError(f"--attention-ids: test sample(s) {', '.join(map(repr, lacking))} have no image")
    cache: dict = {}
    runs = [run_result(run_dir, test, cache, log) for run_dir in run_dirs]
    picked = np.linspace(0, len(test) - 1, min(max_samples, len(test))).round().astype(int)
    samples = [test[int(i)] for i in dict.fromkeys(picked.tolist())]
    counts = ", ".join(f"{m} ({len(r)} seed{'s' if len(r) > 1 else ''})" for m, r in by_method(runs).items())
    return ReportData(f"{configs[0].dataset.name}: {counts}", dict(test.modalities),
                      list(test.class_names), runs, samples, attention_samples=chosen)


def from_demo(result: dict, run_dirs: dict[tuple[str, int], Path], max_samples: int = ANALYSIS_SAMPLES) -> ReportData:
    """The report's data from `robustmm demo`'s results and its runs' directories ((method, seed) -> the run of
    a demo sweep cell): each model as saved, its test logits per scenario from the cell's predictions.npz
    (calibration on the whole test set at no cost), with the Bayes limits."""
    from ..console import quiet_libraries
    from ..data.synthetic import SyntheticBenchmark, SyntheticConfig
    from ..evaluation import read_predictions
    from ..serialisation import load_model

    quiet_libraries()
    config = result["config"]
    benchmark = SyntheticBenchmark(SyntheticConfig(seed=config["data_seed"]), modalities=tuple(config["modalities"]))
    patterns = {s["name"]: pattern_name(s["available"], config["modalities"]) for s in result["scenarios"]}
    grouped: dict[tuple[str, int], list[dict]] = {}
    for row in result["runs"]:
        grouped.setdefault((row["method"], row["seed"]), []).append(row)
    runs = []
    for (method, seed), rows in grouped.items():
        sweeps = [s for s in result["sweeps"] if (s["method"], s["seed"]) == (method, seed)]
        logits, labels, _ = read_predictions(run_dirs[method, seed])
        runs.append(RunResult(
            method=method, seed=seed, metric="accuracy",
            scenarios={row["scenario"]: row["accuracy"] for row in rows},
            sweeps={s["modality"]: s["accuracy"] for s in sweeps},
            per_class={row["scenario"]: row["per_class"] for row in rows},
            model=load_model(run_dirs[method, seed] / "model"),
            train_seconds=rows[0]["train_seconds"],
            pattern_logits={patterns[row["scenario"]]: (logits[row["scenario"]], labels) for row in rows},
        ))
    return ReportData(
        f"robustmm demo: {', '.join(config['modalities'])}, {len(config['seeds'])} seed(s)",
        {m: m for m in config["modalities"]}, list(benchmark.class_names), runs,
        benchmark.sample(min(config["test_size"], max_samples), "test"),
        limits={s["name"]: s["bayes_accuracy"] for s in result["scenarios"]},
    )


def availability_masks(have: np.ndarray, modalities: list[str]) -> dict[str, dict]:
    """"complete" and "<m> missing" as masks of what each sample shows; a sample whose only modality is `m`
    keeps it, as the missing protocol keeps a sample's last modality."""
    import torch

    masks = {"complete": {m: torch.ones(len(have), dtype=torch.bool) for m in modalities}}
    if len(modalities) > 1:
        for i, hidden in enumerate(modalities):
            only = torch.from_numpy(have.sum(1) == have[:, i])
            masks[f"{hidden} missing"] = {m: only if m == hidden else torch.ones(len(have), dtype=torch.bool)
                                          for m in modalities}
    return masks


def from_models(models: dict, samples, title: str | None = None, batch_size: int = 32,
                max_samples: int = ANALYSIS_SAMPLES) -> ReportData:
    """The report's data from models in memory (name -> model, trained on one task) on labelled test `samples`
    (a list of dicts or a dataset), for notebooks. The missing-rate curves mix each sample's prediction with and
    without the modality, the first r of the samples in one fixed random order losing it: exact, because a
    sample's prediction depends only on what it shows."""
    import torch

    from ..metrics import compute_metrics, default_metrics, per_class_scores
    from ..training import scenario_logits

    first = next(iter(models.values()))
    modalities, multilabel = list(first.modalities), first.config.multilabel
    metric = default_metrics(multilabel)[0]
    class_names = list(first.config.class_names or map(str, range(first.config.num_classes)))
    masks = availability_masks(present_table(samples, modalities), modalities)
    order = np.random.default_rng(0).permutation(len(samples))
    runs = []
    for name, model in models.items():
        logits, labels = scenario_logits(model, samples, masks, batch_size)
        sweeps = {}
        for hidden in modalities if len(modalities) > 1 else []:
            curve = []
            for rate in SWEEP_RATES:
                loses = torch.zeros(len(samples), dtype=torch.bool)
                loses[torch.from_numpy(order[: round(rate * len(samples))])] = True
                mixed = torch.where(loses[:, None], logits[f"{hidden} missing"], logits["complete"])
                curve.append(compute_metrics(mixed, labels, multilabel, [metric])[metric])
            sweeps[hidden] = curve
        runs.append(RunResult(
            method=name, seed=model.config.seed, metric=metric,
            scenarios={s: compute_metrics(logits[s], labels, multilabel, [metric])[metric] for s in masks},
            sweeps=sweeps,
            per_class={s: dict(zip(class_names, per_class_scores(logits[s], labels, multilabel))) for s in masks},
            model=model,
        ))
    picked = np.linspace(0, len(samples) - 1, min(max_samples, len(samples))).round().astype(int)
    kinds = {m: first.encoders[m].kind for m in modalities}
    return ReportData(title or f"{', '.join(models)} on {len(samples)} test samples", kinds, class_names, runs,
                      [samples[int(i)] for i in dict.fromkeys(picked.tolist())])
