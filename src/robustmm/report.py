"""`robustmm report`: the figures and tables of a paper on missing modalities, from finished runs, without training.

One self-contained HTML page (figures embedded as PNG, no script from elsewhere, no server), beside it a markdown
summary, the PNGs and every table as JSON and CSV:

- the metric against the missing rate of each modality, one line per method, ± SD over seeds (paper Fig. 2/3);
- a radar over the availability scenarios (Fig. 1b) and the scenario table, mean ± SD, best and second best
  marked, with the Bayes limit where the data has one (the demo's);
- the per-class gain of one method over another with a modality missing, sorted (Fig. 4);
- t-SNE of the fused features: complete, missing without proxies (the sum of the visible modalities' class
  features) and missing with them (the fused feature) (Fig. 5);
- attention of the image encoder's last layer from the class token and each prefix (proxy) token to the patches
  (Fig. 6);
- calibration per availability pattern (expected calibration error, reliability diagram): a model that is sure
  of itself with the image missing is a hazard;
- compute: trainable parameters per part, training time, seconds per 1000 predictions per scenario.

Runs are grouped by method; several runs of one method are its seeds.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write, atomic_write_text
from .calibration import (
    CALIBRATION_FILE, pattern_logits, pattern_name, presence, probabilities, read_temperatures, reliability,
)

SWEEP_RATES = tuple(round(0.1 * step, 1) for step in range(11))
ANALYSIS_SAMPLES = 300
"""Test samples that the model-based parts (calibration, t-SNE) read at most."""
TIMING_SAMPLES = 96
TSNE_SAMPLES = 150
ATTENTION_SAMPLES = 3


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


# ----- from run directories ------------------------------------------------------------------------------------


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
    from .config import RUN_CONFIG, read_run_config
    from .data.protocol import rate_sweep
    from .evaluation import evaluate_run
    from .registry import load_model

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
    from .config import RUN_CONFIG, config_differences, read_run_config
    from .evaluation import SEED_KEYS, open_split

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


def from_demo(result: dict, models: Path, logits: dict, max_samples: int = ANALYSIS_SAMPLES) -> ReportData:
    """The report's data from `robustmm demo`'s results, the models it kept and their test logits ((method, seed,
    scenario) -> [N, classes]: calibration on the whole test set at no cost), with the Bayes limits."""
    import torch

    from .console import quiet_libraries
    from .data.synthetic import SyntheticBenchmark, SyntheticConfig
    from .registry import load_model

    quiet_libraries()
    config = result["config"]
    benchmark = SyntheticBenchmark(SyntheticConfig(seed=config["data_seed"]), modalities=tuple(config["modalities"]))
    labels = torch.tensor([benchmark.latent("test", index).label for index in range(config["test_size"])])
    patterns = {s["name"]: pattern_name(s["available"], config["modalities"]) for s in result["scenarios"]}
    grouped: dict[tuple[str, int], list[dict]] = {}
    for row in result["runs"]:
        grouped.setdefault((row["method"], row["seed"]), []).append(row)
    runs = []
    for (method, seed), rows in grouped.items():
        sweeps = [s for s in result["sweeps"] if (s["method"], s["seed"]) == (method, seed)]
        runs.append(RunResult(
            method=method, seed=seed, metric="accuracy",
            scenarios={row["scenario"]: row["accuracy"] for row in rows},
            sweeps={s["modality"]: s["accuracy"] for s in sweeps},
            per_class={row["scenario"]: row["per_class"] for row in rows},
            model=load_model(models / f"{method}-seed{seed}"),
            train_seconds=rows[0]["train_seconds"],
            pattern_logits={patterns[row["scenario"]]: (logits[method, seed, row["scenario"]], labels) for row in rows},
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

    from .metrics import compute_metrics, default_metrics, per_class_scores
    from .training import scenario_logits

    first = next(iter(models.values()))
    modalities, multilabel = list(first.modalities), first.config.multilabel
    metric = default_metrics(multilabel)[0]
    class_names = list(first.config.class_names or map(str, range(first.config.num_classes)))
    masks = availability_masks(presence(samples, modalities), modalities)
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


def write_report(runs_or_models, out_dir, samples=None, attention_ids=None, log=None) -> Path:
    """The report of run directories (a list), or of models in memory (a dict name -> model) on labelled test
    `samples`; returns the page. `attention_ids`: the run's test samples whose attention maps to show."""
    if isinstance(runs_or_models, dict):
        if samples is None:
            raise ValueError("a report of models needs their labelled test samples")
        data = from_models(runs_or_models, samples)
    else:
        data = from_runs(runs_or_models, attention_ids=attention_ids, log=log)
    return build_report(data, out_dir, log=log)


# ----- what the models show ------------------------------------------------------------------------------------


def output_features(output):
    """(class features modality -> [B, d], proxies (source, target) -> [B, d]) of a model output, whichever
    layout the model's output has (`features.cls` / `features.extras["proxies"]`, or `cls` / `proxies`)."""
    features = getattr(output, "features", None)
    if features is not None:
        return features.cls, features.extras.get("proxies", {})
    return output.cls, output.proxies


def without(sample: dict, hidden: str) -> dict:
    return {**sample, hidden: None}


def fused_features(model, samples: list[dict], hidden: str | None, batch_size: int = 64):
    """(features without proxies, fused features) of `samples` with `hidden` removed: the sum of the visible
    modalities' class features, and the feature the head reads."""
    import torch

    model.eval()
    plain, fused = [], []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            chunk = [without(s, hidden) if hidden else s for s in samples[start : start + batch_size]]
            output = model(model.collate(chunk))
            cls, _ = output_features(output)
            visible = output.visible
            plain.append(sum(cls[m] * visible[m][:, None] for m in cls).float())
            fused.append(output.fused.float())
    return torch.cat(plain).numpy(), torch.cat(fused).numpy()


def tsne(points: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    perplexity = max(2.0, min(30.0, (len(points) - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def attention_maps(model, samples: list[dict], image: str) -> dict:
    """Attention of the image encoder's last layer, averaged over heads, from its class token and each prefix
    token to the patches, as patch grids: {"tokens": names, "maps": [samples, tokens, side, side]}. The encoder
    runs with eager attention for this (the fused kernels do not return the weights)."""
    import torch

    encoder = model.encoders[image]
    base = encoder.backbone.get_base_model()
    prefix = getattr(encoder, "num_prefix_tokens", getattr(encoder, "num_proxies", 0))
    targets = model.proxy_targets(image) if hasattr(model, "proxy_targets") else [m for m in model.modalities
                                                                                   if m != image]
    names = [f"proxy for {targets[i]}" if i < len(targets) else f"prefix {i}" for i in range(prefix)]
    has_cls = getattr(encoder, "pooling", "cls") == "cls"
    rows = ([prefix] if has_cls else []) + list(range(prefix))
    names = (["class token"] if has_cls else []) + names
    captured = []

    def keep_weights(module, args, output):
        if isinstance(output, tuple) and len(output) > 1 and torch.is_tensor(output[1]) and output[1].dim() == 4:
            captured.append(output[1].detach())

    attention_modules = [m for m in base.modules() if type(m).__name__.endswith("Attention")]
    hooks = [m.register_forward_hook(keep_weights) for m in attention_modules]
    previous = base.config._attn_implementation
    base.set_attn_implementation("eager")
    model.eval()
    try:
        with torch.inference_mode():
            batch = model.collate([{m: (s[m] if m == image else None) for m in model.modalities} for s in samples])
            encoder(batch.inputs[image])
    finally:
        base.set_attn_implementation(previous)
        for hook in hooks:
            hook.remove()
    weights = captured[-1].float().mean(1)  # [B, T, T], the last layer
    start = prefix + int(has_cls)
    patches = weights.shape[-1] - start
    side = int(round(patches**0.5))
    maps = weights[:, rows, start:].reshape(len(samples), len(rows), side, side)
    return {"tokens": names, "maps": maps.numpy()}


def seconds_per_1000(model, samples: list[dict], hidden: str | None, batch_size: int = 32) -> float:
    from .predict import batch_logits

    chunk = [without(s, hidden) if hidden else s for s in samples[:TIMING_SAMPLES]]
    batch_logits(model, chunk[:4], "32-true")  # warm-up
    start = time.perf_counter()
    for first in range(0, len(chunk), batch_size):
        batch_logits(model, chunk[first : first + batch_size], "32-true")
    return 1000 * (time.perf_counter() - start) / len(chunk)


# ----- figures -------------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    _pyplot().close(figure)
    return buffer.getvalue()


def by_method(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    grouped: dict[str, list[RunResult]] = {}
    for run in runs:
        grouped.setdefault(run.method, []).append(run)
    return grouped


def mean_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.fmean(known) if known else None


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def sweep_figure(data: ReportData) -> bytes | None:
    plt = _pyplot()
    swept = [m for m in data.modalities if any(m in run.sweeps for run in data.runs)]
    if not swept:
        return None
    figure, axes = plt.subplots(1, len(swept), figsize=(4.4 * len(swept), 3.6), squeeze=False)
    for ax, modality in zip(axes[0], swept):
        for method, runs in by_method(data.runs).items():
            curves = np.array([run.sweeps[modality] for run in runs])
            mean = curves.mean(0)
            sd = curves.std(0, ddof=1) if len(curves) > 1 else np.zeros_like(mean)
            ax.plot(SWEEP_RATES, mean, marker="o", markersize=3, label=method)
            ax.fill_between(SWEEP_RATES, mean - sd, mean + sd, alpha=0.2)
        ax.set_xlabel(f"test samples missing the {modality}")
        ax.set_ylabel(data.runs[0].metric)
        ax.xaxis.set_major_formatter(__import__("matplotlib").ticker.PercentFormatter(1.0))
        ax.legend(fontsize="small")
    return png(figure)


def radar_figure(data: ReportData, scenarios: list[str]) -> bytes | None:
    if len(scenarios) < 3:
        return None
    plt = _pyplot()
    angles = np.linspace(0, 2 * np.pi, len(scenarios), endpoint=False).tolist()
    figure, ax = plt.subplots(figsize=(5, 5), subplot_kw={"projection": "polar"})
    for method, runs in by_method(data.runs).items():
        values = [mean_sd([run.scenarios[s] for run in runs])[0] for s in scenarios]
        ax.plot(angles + angles[:1], values + values[:1], marker="o", label=method)
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.1)
    if data.limits:
        values = [data.limits[s] for s in scenarios]
        ax.plot(angles + angles[:1], values + values[:1], "k--", label="Bayes limit")
    ax.set_xticks(angles, scenarios)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize="small")
    return png(figure)


def gain_pair(methods: list[str]) -> tuple[str, str] | None:
    """(better, reference): CMPT over the baseline where both ran, else the last method over the first."""
    if len(methods) < 2:
        return None
    if "cmpt" in methods and "baseline" in methods:
        return "cmpt", "baseline"
    return methods[-1], methods[0]


def class_gains(data: ReportData, scenario: str) -> list[tuple[str, float]] | None:
    grouped = by_method(data.runs)
    pair = gain_pair(list(grouped))
    if pair is None or not all(scenario in run.per_class for run in data.runs):
        return None
    mean = {m: {c: statistics.fmean(run.per_class[scenario][c] for run in grouped[m]) for c in data.class_names}
            for m in pair}
    return sorted(((c, mean[pair[0]][c] - mean[pair[1]][c]) for c in data.class_names), key=lambda x: -x[1])


def gain_figure(gains: dict[str, list[tuple[str, float]]], pair: tuple[str, str]) -> bytes:
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(gains), figsize=(4.6 * len(gains), 0.3 * max(map(len, gains.values())) + 1.2),
                                squeeze=False)
    for ax, (scenario, rows) in zip(axes[0], gains.items()):
        names, values = [r[0] for r in rows][::-1], [r[1] for r in rows][::-1]
        ax.barh(names, values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(f"{pair[0]} − {pair[1]}, {scenario}", fontsize="medium")
        ax.set_xlabel("per-class score gain")
    return png(figure)


def tsne_figure(panels: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str], title: str) -> bytes:
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.5), squeeze=False)
    for ax, (name, points) in zip(axes[0], panels.items()):
        for index, label in enumerate(class_names):
            chosen = labels == index
            if chosen.any():
                ax.scatter(points[chosen, 0], points[chosen, 1], s=6, label=label)
        ax.set_title(name, fontsize="medium")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="x-small", markerscale=2)
    figure.suptitle(title)
    return png(figure)


def attention_figure(images: list, attention: dict) -> bytes:
    plt = _pyplot()
    tokens = attention["tokens"]
    figure, axes = plt.subplots(len(images), 1 + len(tokens), figsize=(2.4 * (1 + len(tokens)), 2.4 * len(images)),
                                squeeze=False)
    for row, image in enumerate(images):
        shown = np.asarray(image.convert("RGB"))
        axes[row][0].imshow(shown)
        axes[row][0].set_title("image" if row == 0 else "")
        for column, name in enumerate(tokens, 1):
            axes[row][column].imshow(shown)
            heat = attention["maps"][row, column - 1]
            axes[row][column].imshow(heat, cmap="inferno", alpha=0.6, interpolation="nearest",
                                     extent=(0, shown.shape[1], shown.shape[0], 0))
            axes[row][column].set_title(name if row == 0 else "", fontsize="small")
    for ax in axes.flat:
        ax.axis("off")
    return png(figure)


def reliability_figure(diagrams: dict[str, dict[str, dict]]) -> bytes:
    """One panel per method: the reliability curve of each availability pattern."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(diagrams), figsize=(4 * len(diagrams), 4), squeeze=False)
    for ax, (method, patterns) in zip(axes[0], diagrams.items()):
        ax.plot([0, 1], [0, 1], "k:", linewidth=1)
        for pattern, table in patterns.items():
            ax.plot([b["confidence"] for b in table["bins"]], [b["accuracy"] for b in table["bins"]], marker="o",
                    markersize=3, label=f"{pattern} (ECE {table['ece']:.3f})")
        ax.set_title(method)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize="x-small")
    return png(figure)


# ----- the report ----------------------------------------------------------------------------------------------


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


def analyse_models(data: ReportData) -> dict:
    """Calibration, timing, t-SNE and attention: the parts that run the models on the test samples."""
    modalities = list(data.modalities)
    multilabel = data.runs[0].model.config.multilabel
    found: dict = {"calibration": [], "diagrams": {}, "compute": []}
    for method, runs in by_method(data.runs).items():
        for run in runs:
            model = run.model
            patterns = run.pattern_logits or pattern_logits(model, data.samples)
            for pattern, (logits, truth) in patterns.items():
                before = reliability(probabilities(logits, multilabel), truth, multilabel)
                row = {"method": method, "seed": run.seed, "pattern": pattern, "samples": len(truth),
                       "ece": before["ece"]}
                if pattern in run.calibration:
                    after = probabilities(logits, multilabel, run.calibration[pattern])
                    row.update(temperature=run.calibration[pattern],
                               ece_calibrated=reliability(after, truth, multilabel)["ece"])
                found["calibration"].append(row)
                if run is runs[0]:
                    found["diagrams"].setdefault(method, {})[pattern] = before
        first = runs[0]
        counts = first.model.trainable_parameter_counts()
        timing = {"complete": seconds_per_1000(first.model, data.samples, None)}
        if len(modalities) > 1:
            timing.update({f"{m} missing": seconds_per_1000(first.model, [s for s in data.samples if any(
                s[o] is not None for o in modalities if o != m)], m) for m in modalities})
        found["compute"].append({"method": method, "parameters": counts,
                                 "train_seconds": mean_or_none([run.train_seconds for run in runs]),
                                 "seconds_per_1000": timing})
    focus = next((run for run in data.runs if run.method == "cmpt"), data.runs[0])
    found["focus"] = f"{focus.method} (seed {focus.seed})"
    if len(modalities) > 1 and not multilabel:
        complete = [s for s in data.samples if all(s[m] is not None for m in modalities)][:TSNE_SAMPLES]
        truth = np.array([s["label"] for s in complete])
        panels = {"complete": tsne(fused_features(focus.model, complete, None)[1])}
        for hidden in modalities:
            plain, fused = fused_features(focus.model, complete, hidden)
            panels[f"{hidden} missing, without proxies"] = tsne(plain)
            panels[f"{hidden} missing, with proxies"] = tsne(fused)
        found["tsne"] = (panels, truth)
    images = [m for m, kind in data.modalities.items() if kind == "image"]
    if images:
        chosen = data.attention_samples or [s for s in data.samples if s[images[0]] is not None][:ATTENTION_SAMPLES]
        if chosen:
            found["attention"] = ([s[images[0]] for s in chosen], attention_maps(focus.model, chosen, images[0]))
    return found


CHECK_SCRIPT = """<script>
function drawn(img) {
  if (!img.complete || img.naturalWidth === 0) return false;
  var canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  var context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  var bottom = context.getImageData(0, img.naturalHeight - 1, img.naturalWidth, 1).data;
  for (var i = 3; i < bottom.length; i += 4) if (bottom[i] === 0) return false;
  return true;
}
window.addEventListener("load", function () {
  var figures = Array.prototype.slice.call(document.images);
  var broken = figures.filter(function (img) { return !drawn(img); }).map(function (img) { return img.alt; });
  document.getElementById("render-status").textContent = broken.length
    ? "broken figures: " + broken.join(", ") : "all " + figures.length + " figures drawn";
});
</script>"""
"""Writes into the page whether every figure decoded and was drawn to its last row (the figures are opaque, so a
transparent last row is a truncated image), for a reader and for the headless-browser check."""

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}
.best{font-weight:bold}.second{text-decoration:underline}.note{color:#555;font-size:90%}"""


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


def build_report(data: ReportData, out_dir, log=None) -> Path:
    """Write `report.html`, `report.md`, `figures/*.png` and `tables/*.{json,csv}` into `out_dir`."""
    out_dir = Path(out_dir)
    figures_dir, tables_dir = out_dir / "figures", out_dir / "tables"
    figures_dir.mkdir(parents=True, exist_ok=True)
    tables_dir.mkdir(parents=True, exist_ok=True)
    methods = list(by_method(data.runs))
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

    pair = gain_pair(methods)
    gains = {s: g for s in scenarios[1:] if (g := class_gains(data, s))}
    if pair and gains:
        write_table(tables_dir, "class_gain", [
            {"scenario": s, "class": c, "gain": g, "method": pair[0], "over": pair[1]} for s, rows in gains.items()
            for c, g in rows
        ])
        sections.append((f"Per-class gain of {pair[0]} over {pair[1]}", "", [("class-gain", gain_figure(gains, pair))],
                         ""))

    if log:
        log("running the models: calibration, timing, t-SNE, attention")
    found = analyse_models(data)
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
        f"<style>{STYLE}</style></head><body><h1>{html.escape(data.title)}</h1>{''.join(page)}"
        f'<p id="render-status" class="note">figures not checked</p>{CHECK_SCRIPT}</body></html>'
    )
    atomic_write_text(out_dir / "report.html", document)
    atomic_write_text(out_dir / "report.md", "\n".join(summary))
    return out_dir / "report.html"


def main(args) -> None:
    from .evaluation import log_to_stderr

    ids = [part.strip() for part in args.attention_ids.split(",") if part.strip()] if args.attention_ids else None
    path = write_report(args.run_dirs, args.out, attention_ids=ids, log=log_to_stderr)
    print(f"wrote {path}, {Path(args.out) / 'report.md'}, figures/ and tables/")
