"""`robustmm demo`: every method on the generated benchmark, scored against the Bayes limit of each scenario.

One model per method and seed is trained on complete image+text data (or any chosen modalities) and evaluated
on every availability pattern from the same test set. Because the generator knows its own probabilities, each
scenario has an exact Bayes-optimal accuracy: the table shows how far each method is from the best any model
could do, and a result above that limit beyond sampling error is flagged as a bug.

Model selection uses a validation set in which the availability patterns are mixed evenly (the demo's model is
meant to answer with whatever a request carries), never the test set.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data.synthetic import SyntheticBenchmark, SyntheticConfig, check_not_above_bayes, demo_encoder_paths
from .model import atomic_write
from .registry import build_model
from .training import TrainConfig, evaluate, train


@dataclass
class DemoConfig:
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])
    methods: list[str] = field(default_factory=lambda: ["baseline", "dropout", "cmpt"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_size: int = 1200
    val_size: int = 300
    test_size: int = 1000
    epochs: int = 4
    warmup_epochs: float = 0.5
    batch_size: int = 32
    lr: float = 3e-3
    data_seed: int = 0
    cmpt_options: dict = field(default_factory=dict)
    """Ablations of CMPT: align_weight, align_denominator, align_detach_target."""

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        """About a minute on two CPU cores: one seed, small splits, two epochs."""
        settings = dict(seeds=[0], train_size=400, val_size=90, test_size=300, epochs=2)
        return cls(**{**settings, **overrides})


def with_only(sample: dict, available, modalities) -> dict:
    """The sample with every modality outside `available` removed."""
    return {k: (None if k in modalities and k not in available else v) for k, v in sample.items()}


def run_demo(config: DemoConfig, out_dir: str | Path | None = None, progress: bool = True, log=print) -> dict:
    start = time.perf_counter()
    benchmark = SyntheticBenchmark(SyntheticConfig(seed=config.data_seed), modalities=tuple(config.modalities))
    scenarios = benchmark.scenarios()
    splits = {
        split: benchmark.sample(size, split)
        for split, size in (("train", config.train_size), ("val", config.val_size), ("test", config.test_size))
    }
    validation = [
        with_only(s, scenarios[i % len(scenarios)]["available"], config.modalities) for i, s in enumerate(splits["val"])
    ]
    paths = demo_encoder_paths()
    encoders = {m: paths[m] for m in config.modalities}
    runs = []
    for seed in config.seeds:
        for method in config.methods:
            log(f"training {method} (seed {seed}) on {len(splits['train'])} complete samples")
            options = config.cmpt_options if method == "cmpt" else {}
            model = build_model(
                method, encoders=encoders, num_classes=len(benchmark.class_names),
                class_names=list(benchmark.class_names), seed=seed, **options,
            )
            train_config = TrainConfig(
                epochs=config.epochs, warmup_epochs=config.warmup_epochs, batch_size=config.batch_size,
                lr=config.lr, seed=seed, progress_bar=progress,
            )
            train(model, splits["train"], validation, train_config)
            for scenario in scenarios:
                test = [with_only(s, scenario["available"], config.modalities) for s in splits["test"]]
                accuracy = evaluate(model, test, batch_size=64)["accuracy"]
                runs.append({"method": method, "seed": seed, "scenario": scenario["name"], "accuracy": accuracy})
    result = {
        "scenarios": scenarios,
        "runs": runs,
        "wall_seconds": round(time.perf_counter() - start, 1),
        "config": asdict(config),
        "above_bayes": above_bayes(scenarios, runs, config.test_size),
    }
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
    return result


def above_bayes(scenarios, runs, test_size) -> list[dict]:
    """Runs whose accuracy exceeds the Bayes limit beyond sampling error: impossible unless something is wrong."""
    limits = {s["name"]: s["bayes_accuracy"] for s in scenarios}
    return [r for r in runs if not check_not_above_bayes(r["accuracy"], test_size, limits[r["scenario"]])]


def summary(result: dict) -> dict:
    """Mean and SD of accuracy per (scenario, method) over seeds."""
    table: dict = {}
    for run in result["runs"]:
        table.setdefault((run["scenario"], run["method"]), []).append(run["accuracy"])
    return {
        key: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0) for key, v in table.items()
    }


def format_table(result: dict) -> str:
    methods = result["config"]["methods"]
    stats = summary(result)
    header = f"{'scenario':<22}{'Bayes':>7}" + "".join(f"{m:>22}" for m in methods)
    lines = [header, "-" * len(header)]
    for scenario in result["scenarios"]:
        name, limit = scenario["name"], scenario["bayes_accuracy"]
        cells = []
        for method in methods:
            mean, sd = stats[name, method]
            cells.append(f"{mean:.3f}±{sd:.3f} ({mean / limit:4.0%})")
        lines.append(f"{name:<22}{limit:>7.3f}" + "".join(f"{c:>22}" for c in cells))
    seeds = len(result["config"]["seeds"])
    lines.append(f"accuracy mean±SD over {seeds} seed(s), (ratio to the Bayes limit); {result['wall_seconds']} s")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = result["config"]["methods"]
    scenarios = result["scenarios"]
    stats = summary(result)
    width = 0.8 / len(methods)
    figure, axes = plt.subplots(figsize=(1.6 + 1.5 * len(scenarios), 4))
    for j, method in enumerate(methods):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(scenarios))]
        means = [stats[s["name"], method][0] for s in scenarios]
        sds = [stats[s["name"], method][1] for s in scenarios]
        axes.bar(xs, means, width, yerr=sds, capsize=2, label=method)
    for i, scenario in enumerate(scenarios):
        axes.hlines(scenario["bayes_accuracy"], i - 0.45, i + 0.45, colors="black", linestyles="--",
                    label="Bayes limit" if i == 0 else None)
    axes.set_xticks(range(len(scenarios)), [s["name"] for s in scenarios], rotation=20, ha="right")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1)
    axes.set_title("Accuracy per availability scenario, against the Bayes limit")
    axes.legend(loc="lower left", fontsize="small")
    figure.tight_layout()
    atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=120))
    plt.close(figure)


def write_outputs(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    atomic_write(out_dir / "results.json", lambda temp: Path(temp).write_text(text))
    plot(result, out_dir / "accuracy.png")


def main(args) -> None:
    overrides = {}
    if args.modalities:
        overrides["modalities"] = args.modalities.split(",")
    if args.methods:
        overrides["methods"] = args.methods.split(",")
    if args.seeds is not None:
        overrides["seeds"] = list(range(args.seeds))
    for name in ("epochs", "train_size", "test_size"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    cmpt_options = {
        k: v
        for k, v in (
            ("align_weight", args.align_weight),
            ("align_denominator", args.align_denominator),
            ("align_detach_target", args.align_detach_target),
        )
        if v is not None
    }
    if cmpt_options:
        overrides["cmpt_options"] = cmpt_options
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    result = run_demo(config, args.out, progress=not args.no_progress)
    print(format_table(result))
    if result["above_bayes"]:
        print(f"WARNING: {len(result['above_bayes'])} run(s) beat the Bayes limit beyond sampling error: "
              f"{result['above_bayes']}")
    if args.out:
        print(f"wrote {Path(args.out) / 'results.json'} and {Path(args.out) / 'accuracy.png'}")
