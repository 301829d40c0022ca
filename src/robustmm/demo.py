"""`robustmm demo`: every method on the generated benchmark, scored against the Bayes limit of each scenario.

One model per method and seed is trained on complete image+text data (or any chosen modalities) and evaluated
on every availability pattern from the same test set. Because the generator knows its own probabilities, each
scenario has an exact Bayes-optimal accuracy: the table shows how far each method is from the best any model
could do, and a result above that limit beyond sampling error is flagged as a bug.

Model selection uses a validation set in which the availability patterns are mixed evenly (the demo's model is
meant to answer with whatever a request carries), never the test set.

The runs are the cells of the shipped `demo` sweep (`robustmm sweep demo`), the demo's settings given as its
overrides, trained side by side by the sweep's local executor: each is an ordinary run directory under
OUT/cells/, and the comparison with the Bayes classifier reads each cell's per-sample test predictions.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .atomic import atomic_write, atomic_write_text, check_output_folder
from .checks import check_field_types, load_json
from .children import remove_folder
from .cores import available_cores
from .data.protocol import SWEEP_RATES
from .data.synthetic import SyntheticBenchmark, SyntheticConfig, demo_encoder_paths
from .metrics import mean_sd
from .precision import resolve_precision
from .registry import METHODS, get_method


@dataclass
class DemoConfig:
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])
    methods: list[str] = field(default_factory=lambda: ["baseline", "dropout", "cmpt"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    train_size: int = 1200
    val_size: int = 300
    test_size: int = 1000
    epochs: int = 2
    warmup_epochs: float = 0.3
    batch_size: int = 32
    lr: float = 1e-2
    """Higher than the paper's 1e-3: a few hundred steps here against tens of thousands there."""
    precision: str = "auto"
    """Lightning precision for training and evaluation. `auto`: bf16-mixed where the CPU (or GPU) computes bf16
    natively, about 1.4x faster than fp32 there; 32-true elsewhere, where bf16 is emulated and ~7x slower."""
    workers: int = 2
    """Runs trained side by side in separate processes (the sweep's `--jobs`), the CPU cores split between them:
    small encoders use one core better than two, so two one-core runs finish sooner than two two-core runs one
    after the other."""
    data_seed: int = 0
    options: dict = field(default_factory=dict)
    """Method options: `key` goes to every method that has it (e.g. fusion_norm, rank, mwam: what is compared
    must differ in the method only), `method.key` to that method alone (e.g. cmpt.align_weight)."""

    def __post_init__(self):
        check_field_types(self)
        for name in ("modalities", "methods", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"demo {name} must not be empty")
        for name in ("train_size", "val_size", "test_size", "epochs", "batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"demo lr must be > 0, got {self.lr}")

    @classmethod
    def quick(cls, **overrides) -> "DemoConfig":
        """About a minute on two CPU cores: one seed, small splits, two epochs."""
        settings = dict(seeds=[0], train_size=400, val_size=90, test_size=300, epochs=2)
        return cls(**{**settings, **overrides})


def benchmark_of(config: DemoConfig) -> SyntheticBenchmark:
    return SyntheticBenchmark(SyntheticConfig(seed=config.data_seed), modalities=tuple(config.modalities))


def applies(key: str, method: str) -> bool:
    """Whether the option `key` (`name` or `method.name`) goes to `method`."""
    cls = get_method(method)
    owner, _, name = key.rpartition(".")
    return METHODS.key(owner) == cls.method if owner else name in cls.option_names()


def options_for(options: dict, method: str) -> dict:
    """The options in `options` (`key` or `method.key`) that apply to `method`, by their plain names."""
    return {key.rpartition(".")[2]: value for key, value in options.items() if applies(key, method)}


def check_methods(config: DemoConfig) -> None:
    """A bad method or option fails at once, not in a run minutes later; an option that no method of the run
    takes is an error, not a silent no-op."""
    for key in config.options:
        if not any(applies(key, m) for m in config.methods):
            owner = key.rpartition(".")[0]
            names = owner if owner else ", ".join(config.methods)
            raise ValueError(f"option {key!r} applies to none of the methods run ({names}); see `robustmm methods`")
    benchmark, paths = benchmark_of(config), demo_encoder_paths()
    for method in config.methods:
        get_method(method).config_from_kwargs(
            encoders={m: paths[m] for m in config.modalities}, num_classes=len(benchmark.class_names),
            class_names=list(benchmark.class_names), **options_for(config.options, method),
        )


EVALUATION_SCENARIOS = {1: ["complete"], 2: ["complete", "missing"]}
"""The cells' evaluation by the number of modalities: every availability pattern (`patterns` from three on)."""


def demo_overrides(config: DemoConfig) -> list[str]:
    """The demo's settings as `--set` assignments of the shipped `demo` sweep, its grid's seeds and methods
    included."""
    paths = demo_encoder_paths()
    settings = {
        "train.seed": config.seeds, "model.method": config.methods,
        "dataset.options.modalities": config.modalities, "dataset.options.seed": config.data_seed,
        **{f"dataset.options.{name}": getattr(config, name) for name in ("train_size", "val_size", "test_size")},
        **{f"train.{name}": getattr(config, name)
           for name in ("epochs", "warmup_epochs", "batch_size", "lr", "precision")},
        "evaluation.scenarios": EVALUATION_SCENARIOS.get(len(config.modalities), ["patterns"]),
        **{f"model.encoders.{m}": paths[m] for m in config.modalities},
    }
    return [f"{key}={json.dumps(value)}" for key, value in settings.items()]


def demo_sweep(config: DemoConfig, folder: Path):
    """The shipped `demo` sweep with the demo's settings, its cells in `folder`/cells; every method gets the
    options that apply to it (`options_for`), and every cell is checked before anything trains."""
    from .runs import check_run_dir
    from .sweep.spec import check_cells, load_sweep

    sweep = load_sweep("demo", demo_overrides(config), str(folder), check=False)
    for index, cell in enumerate(sweep.cells):
        model = replace(cell.config.model, options=options_for(config.options, cell.config.model.method))
        sweep.cells[index] = replace(cell, config=replace(cell.config, model=model))
    check_cells(sweep)
    for cell in sweep.cells:  # a folder of a demo with other settings is refused here, not cell by cell later
        check_run_dir(cell.run_dir, cell.config)
    return sweep


def run_demo(config: DemoConfig, out_dir: str | Path | None = None, progress: bool = True, log=print) -> dict:
    """Train and evaluate every (method, seed) as a cell of the shipped `demo` sweep (its local executor,
    `workers` jobs) in `out_dir` (a temporary folder without it), then score the cells against the Bayes limits
    from their per-sample predictions and write results.json, the plots and the report. A rerun on the same
    `out_dir` with the same settings skips the finished cells and resumes interrupted ones."""
    from .sweep.cell import DONE
    from .sweep.run import run_cells

    from .console import quiet_libraries

    start = time.perf_counter()
    quiet_libraries()
    config = replace(config, precision=resolve_precision(config.precision))
    check_methods(config)
    scratch = None if out_dir is not None else Path(tempfile.mkdtemp(prefix="robustmm-demo-"))
    try:
        folder = Path(out_dir) if out_dir is not None else scratch
        sweep = demo_sweep(config, folder)
        jobs = max(1, min(config.workers, len(sweep.cells), available_cores()))
        log(f"training {len(sweep.cells)} models ({', '.join(config.methods)} x {len(config.seeds)} seeds) on "
            f"{config.train_size} complete samples, {jobs} at a time")
        states = run_cells(sweep, "local", jobs, progress=progress, log=log, scratch=scratch,
                           describe=lambda cell: scores_line(sweep, cell))
        failed = [name for name, (state, _) in states.items() if state != DONE]
        if failed:
            raise RuntimeError(f"demo: {len(failed)} of {len(sweep.cells)} runs failed ({', '.join(failed)}); "
                               f"their logs are in {folder / 'logs'}")
        result = demo_results(config, sweep, time.perf_counter() - start)
        if out_dir is not None:
            write_outputs(result, folder)
            write_demo_report(result, sweep, folder / "report", log)
    finally:
        if scratch is not None:
            remove_folder(scratch)
    return result


def scores_line(sweep, cell) -> str:
    """A finished run as the demo shows it: method, seed, accuracy per scenario and its time."""
    from .sweep.cell import EVALUATION, cell_seconds
    from .sweep.executors import cell_log

    rows = json.loads((cell.run_dir / EVALUATION).read_text())["scenarios"]
    scores = ", ".join(f"{row['name']} {row['metrics']['accuracy']:.3f}" for row in rows)
    seconds = cell_seconds(cell_log(sweep, cell))
    return f"{cell.config.model.method} (seed {cell.config.train.seed}): {scores} [{seconds} s]"


def demo_results(config: DemoConfig, sweep, seconds: float) -> dict:
    """results.json's content from the cells' run directories: each (method, seed, scenario) with its accuracy,
    per-class recall and McNemar p-value against the Bayes classifier on the same test samples (from the cell's
    predictions.npz), and the missing-rate curves."""
    from .evaluation import read_predictions
    from .report.loading import training_seconds
    from .serialisation import load_model
    from .sweep.cell import EVALUATION, cell_seconds
    from .sweep.executors import cell_log

    scenarios = benchmark_of(config).scenarios()
    bayes_correct, bayes_labels = bayes_correct_on_test(config, scenarios)
    for scenario in scenarios:
        scenario["bayes_accuracy_test"] = float(bayes_correct[scenario["name"]].mean())
    runs, correct, trainable = [], {}, {}
    for cell in sweep.cells:
        method, seed, run_dir = cell.config.model.method, cell.config.train.seed, cell.run_dir
        evaluated = {row["name"]: row for row in json.loads((run_dir / EVALUATION).read_text())["scenarios"]}
        logits, labels, _ = read_predictions(run_dir)
        if not np.array_equal(labels.numpy(), bayes_labels):
            raise ValueError(f"{run_dir}: its test labels are not those of the demo's test set (data seed "
                             f"{config.data_seed}, {config.test_size} samples)")
        if method not in trainable:
            trainable[method] = load_model(run_dir / "model").trainable_parameter_counts()["total_trainable"]
        train_seconds = training_seconds(run_dir)
        for scenario in scenarios:
            name = scenario["name"]
            correct[method, seed, name] = (logits[name].argmax(-1) == labels).numpy()
            runs.append({
                "method": method, "seed": seed, "scenario": name, "seconds": cell_seconds(cell_log(sweep, cell)),
                "train_seconds": None if train_seconds is None else round(train_seconds, 1),
                "trainable_parameters": trainable[method],
                "accuracy": evaluated[name]["metrics"]["accuracy"],
                "per_class": evaluated[name]["per_class"],
                "p_above_bayes": mcnemar_above(correct[method, seed, name], bayes_correct[name]),
                "run_dir": str(run_dir),
            })
    return {
        "scenarios": scenarios,
        "runs": runs,
        "sweeps": missing_rate_sweeps(config, correct),
        "wall_seconds": round(seconds, 1),
        "config": asdict(config),
        "above_bayes": [run for run in runs if run["p_above_bayes"] < ABOVE_BAYES_P],
    }


def write_demo_report(result: dict, sweep, folder: Path, log) -> None:
    """The report of the cells (`robustmm report`'s page) with the Bayes limits, from their saved models and
    predictions."""
    import torch

    from .report import build_report, from_demo

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the small encoders run as fast on one core, and do not stall on a busy machine
    try:
        run_dirs = {(c.config.model.method, c.config.train.seed): c.run_dir for c in sweep.cells}
        build_report(from_demo(result, run_dirs), folder, log=log)
    finally:
        torch.set_num_threads(threads)


ABOVE_BAYES_P = 0.001
"""A run whose McNemar p-value against the Bayes classifier is below this is flagged: no model beats the Bayes
classifier on average, so beating it on the same samples beyond chance means information leaks into the model."""


def bayes_correct_on_test(config: DemoConfig, scenarios: list[dict]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per scenario, which test samples the generator's own Bayes classifier gets right (from the latent messages
    of each sample: nothing is rendered), and the test labels. Its accuracy on these samples differs from the population limit by
    sampling error, so a model is judged against it sample by sample (`mcnemar_above`)."""
    benchmark = benchmark_of(config)
    latents = [benchmark.latent("test", index) for index in range(config.test_size)]
    labels = np.array([latent.label for latent in latents])
    return {
        s["name"]: benchmark.bayes_posterior(latents, tuple(s["available"])).argmax(1) == labels for s in scenarios
    }, labels


def mcnemar_above(model_correct: np.ndarray, bayes_correct: np.ndarray) -> float:
    """One-sided exact McNemar test that the model is right more often than the Bayes classifier on the same
    samples: a binomial test over the samples where exactly one of them is right."""
    from scipy.stats import binomtest

    only_model = int((model_correct & ~bayes_correct).sum())
    discordant = only_model + int((~model_correct & bayes_correct).sum())
    return 1.0 if discordant == 0 else float(binomtest(only_model, discordant, 0.5, alternative="greater").pvalue)


def missing_rate_sweeps(config: DemoConfig, correct: dict) -> list[dict]:
    """Accuracy as the test missing rate of each modality goes from 0 to 100% (paper Fig. 3), from the scores of
    the complete and the one-missing scenarios: at rate r, the first r of the test samples in one fixed random
    order lose the modality. Exact, because each sample's prediction depends only on what it carries."""
    if len(config.modalities) < 2:
        return []
    order = np.random.default_rng(config.data_seed).permutation(config.test_size)
    sweeps = []
    for modality in config.modalities:
        for method in config.methods:
            for seed in config.seeds:
                complete, missing = correct[method, seed, "complete"], correct[method, seed, f"{modality} missing"]
                accuracies = []
                for rate in SWEEP_RATES:
                    loses = np.zeros(config.test_size, dtype=bool)
                    loses[order[: round(rate * config.test_size)]] = True
                    accuracies.append(float(np.where(loses, missing, complete).mean()))
                sweeps.append({"modality": modality, "method": method, "seed": seed, "rates": list(SWEEP_RATES),
                               "accuracy": accuracies})
    return sweeps


def summary(result: dict) -> dict:
    """Mean and SD of accuracy per (scenario, method) over seeds."""
    table: dict = {}
    for run in result["runs"]:
        table.setdefault((run["scenario"], run["method"]), []).append(run["accuracy"])
    return {key: mean_sd(v) for key, v in table.items()}


def format_table(result: dict) -> str:
    methods = result["config"]["methods"]
    stats = summary(result)
    header = f"{'scenario':<16}{'Bayes':>7}{'on test':>9}" + "".join(f"{m:>24}" for m in methods)
    lines = [header, "-" * len(header)]
    for scenario in result["scenarios"]:
        name, limit, on_test = scenario["name"], scenario["bayes_accuracy"], scenario["bayes_accuracy_test"]
        cells = []
        for method in methods:
            mean, sd = stats[name, method]
            cells.append(f"{mean:.3f}±{sd:.3f} ({mean / limit:.0%}|{mean / on_test:.0%})")
        lines.append(f"{name:<16}{limit:>7.3f}{on_test:>9.3f}" + "".join(f"{c:>24}" for c in cells))
    seeds = len(result["config"]["seeds"])
    lines.append(
        f"accuracy mean±SD over {seeds} seed(s) (ratio to the Bayes limit | to the Bayes classifier on the same "
        f"test samples); {result['wall_seconds']} s"
    )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = result["config"]["methods"]
    scenarios = result["scenarios"]
    stats = summary(result)
    width = 0.8 / len(methods)
    figure, axes = plt.subplots(figsize=(4.2 + 1.5 * len(scenarios), 4))
    for j, method in enumerate(methods):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(scenarios))]
        means = [stats[s["name"], method][0] for s in scenarios]
        sds = [stats[s["name"], method][1] for s in scenarios]
        axes.bar(xs, means, width, yerr=sds, capsize=2, label=method)
    for i, scenario in enumerate(scenarios):
        axes.hlines(scenario["bayes_accuracy"], i - 0.45, i + 0.45, colors="black", linestyles="--",
                    label="Bayes limit" if i == 0 else None)
        axes.hlines(scenario["bayes_accuracy_test"], i - 0.45, i + 0.45, colors="grey", linestyles=":",
                    label="Bayes classifier on these test samples" if i == 0 else None)
    axes.set_xticks(range(len(scenarios)), [s["name"] for s in scenarios], rotation=20, ha="right")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(0, 1)
    axes.set_title("Accuracy per availability scenario, against the Bayes limit")
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    figure.tight_layout()
    atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=120))
    plt.close(figure)


def write_outputs(result: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    atomic_write_text(out_dir / "results.json", text)
    plot(result, out_dir / "accuracy.png")
    if result["sweeps"]:
        plot_sweeps(result, out_dir / "missing-rate.png")


def earlier_demo(folder: Path) -> bool:
    """Whether `folder` holds what a demo writes: a results.json with scenarios and runs, or, before its
    results (a demo interrupted), the manifest of the shipped demo sweep, whose finished cells a rerun keeps."""
    try:
        result = load_json((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = None
    if isinstance(result, dict) and {"scenarios", "runs"} <= set(result):
        return True
    try:
        manifest = load_json((folder / "sweep.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("source") == "shipped sweep demo"


def plot_sweeps(result: dict, path: Path) -> None:
    """Accuracy against the test missing rate of each modality, mean ± SD over seeds (paper Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modalities, methods = result["config"]["modalities"], result["config"]["methods"]
    figure, axes = plt.subplots(1, len(modalities), figsize=(4.2 * len(modalities), 3.6), squeeze=False)
    for ax, modality in zip(axes[0], modalities):
        for method in methods:
            curves = np.array(
                [s["accuracy"] for s in result["sweeps"] if (s["modality"], s["method"]) == (modality, method)]
            )
            mean, sd = curves.mean(0), curves.std(0, ddof=1) if len(curves) > 1 else np.zeros(curves.shape[1])
            ax.plot(SWEEP_RATES, mean, marker="o", markersize=3, label=method)
            ax.fill_between(SWEEP_RATES, mean - sd, mean + sd, alpha=0.2)
        ax.set_xlabel(f"test samples missing the {modality}")
        ax.set_ylabel("test accuracy")
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.legend(fontsize="small")
    figure.tight_layout()
    atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=120))
    plt.close(figure)


def main(args) -> None:
    from .cli import comma_list

    overrides = {}
    if args.modalities is not None:
        overrides["modalities"] = comma_list(args.modalities, "--modalities")
    if args.methods is not None:
        methods = comma_list(args.methods, "--methods")
        overrides["methods"] = METHODS.names() if methods == ["all"] else methods
    if args.seeds is not None:
        overrides["seeds"] = list(range(args.seeds))
    for name in ("epochs", "train_size", "test_size", "batch_size", "lr", "workers", "precision"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.option:
        from .data.commands import parse_options

        overrides["options"] = parse_options(args.option)
    config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
    if args.out:
        check_output_folder(args.out, args.overwrite, earlier_demo, "an earlier demo's output")
    if args.methods == "all":
        print(f"note: --methods all trains {len(config.methods)} methods ({', '.join(config.methods)}), "
              f"{len(config.methods) / len(DemoConfig().methods):.1f}x the default demo's runs, and map and rep "
              "cost more per run (prompts in every layer they reach; one evaluation pass per scenario): expect "
              "about three times the default demo's time (BENCHMARKS.md)")
    try:
        result = run_demo(config, args.out, progress=not args.no_progress)
    except (KeyboardInterrupt, SystemExit) as interruption:
        if args.out and not (isinstance(interruption, SystemExit) and interruption.code in (0, None)):
            print(f"robustmm demo: interrupted; the same command resumes it, keeping its finished runs "
                  f"(robustmm sweep status {args.out})", file=sys.stderr)
        raise
    print(format_table(result))
    if result["above_bayes"]:
        print(f"WARNING: {len(result['above_bayes'])} run(s) beat the Bayes classifier on the same samples "
              f"(McNemar p < {ABOVE_BAYES_P}): {result['above_bayes']}")
    if args.out:
        print(f"wrote {Path(args.out) / 'results.json'}, {Path(args.out) / 'accuracy.png'}, the runs "
              f"{Path(args.out) / 'cells'} and the report {Path(args.out) / 'report' / 'report.html'}")
