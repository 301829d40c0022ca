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
import math
import os
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .atomic import atomic_write, atomic_write_text, check_output_folder
from .checks import check_field_types, load_json
from .children import children_end_with_us, end_with_parent, remove_folder
from .cores import available_cores, job_threads
from .data.protocol import SWEEP_RATES
from .data.synthetic import SyntheticBenchmark, SyntheticConfig, demo_encoder_paths
from .metrics import mean_sd
from .precision import resolve_precision
from .registry import METHODS, build_model, get_method, outside_modules


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
    """Runs trained side by side in separate processes, the CPU cores split between them: small encoders use
    one core better than two, so two one-core runs finish sooner than two two-core runs one after the other."""
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

    @property
    def steps_per_run(self) -> int:
        return self.epochs * math.ceil(self.train_size / self.batch_size)


@dataclass
class DemoData:
    """What every run reads: the splits, the scenarios and the encoders."""

    train: list[dict]
    val: list[dict]
    test: list[dict]
    scenarios: list[dict]
    class_names: list[str]
    encoders: dict[str, str]


def with_only(sample: dict, available, modalities) -> dict:
    """The sample with every modality outside `available` removed."""
    return {k: (None if k in modalities and k not in available else v) for k, v in sample.items()}


def benchmark_of(config: DemoConfig) -> SyntheticBenchmark:
    return SyntheticBenchmark(SyntheticConfig(seed=config.data_seed), modalities=tuple(config.modalities))


def make_data(config: DemoConfig) -> DemoData:
    """The splits, rendered (deterministically from `data_seed`, so every worker process renders the same)."""
    benchmark = benchmark_of(config)
    scenarios = benchmark.scenarios()
    val = [
        with_only(s, scenarios[i % len(scenarios)]["available"], config.modalities)
        for i, s in enumerate(benchmark.sample(config.val_size, "val"))
    ]
    paths = demo_encoder_paths()
    return DemoData(
        train=benchmark.sample(config.train_size, "train"),
        val=val,
        test=benchmark.sample(config.test_size, "test"),
        scenarios=scenarios,
        class_names=list(benchmark.class_names),
        encoders={m: paths[m] for m in config.modalities},
    )


def applies(key: str, method: str) -> bool:
    """Whether the option `key` (`name` or `method.name`) goes to `method`."""
    cls = get_method(method)
    owner, _, name = key.rpartition(".")
    return METHODS.key(owner) == cls.method if owner else name in cls.option_names()


def options_for(options: dict, method: str) -> dict:
    """The options in `options` (`key` or `method.key`) that apply to `method`, by their plain names."""
    return {key.rpartition(".")[2]: value for key, value in options.items() if applies(key, method)}


def model_options(config: DemoConfig, data: DemoData, method: str) -> dict:
    options = options_for(config.options, method)
    return dict(encoders=data.encoders, num_classes=len(data.class_names), class_names=data.class_names, **options)


def check_methods(config: DemoConfig, data: DemoData) -> None:
    """A bad method or option fails at once, not in a run minutes later; an option that no method of the run
    takes is an error, not a silent no-op."""
    for key in config.options:
        if not any(applies(key, m) for m in config.methods):
            owner = key.rpartition(".")[0]
            names = owner if owner else ", ".join(config.methods)
            raise ValueError(f"option {key!r} applies to none of the methods run ({names}); see `robustmm methods`")
    for method in config.methods:
        get_method(method).config_from_kwargs(**model_options(config, data, method))


def train_and_score(
    config: DemoConfig, data: DemoData, method: str, seed: int, advance, callbacks=(), save_to: Path | None = None
) -> list[dict]:
    """Train one method with one seed on complete data, select it on validation, score every scenario.
    `callbacks` (Lightning's) watch the training, e.g. to record what the demo does not report; `save_to` keeps
    the model (`save_pretrained`) for the report."""
    import torch

    from .metrics import compute_metrics, per_class_scores
    from .training import StepReporter, TrainConfig, scenario_logits, train

    start = time.perf_counter()
    model = build_model(method, **model_options(config, data, method), seed=seed)
    train_config = TrainConfig(
        epochs=config.epochs, warmup_epochs=config.warmup_epochs, batch_size=config.batch_size, lr=config.lr,
        seed=seed, precision=config.precision, group_by_length=True, progress_bar=False,
    )
    with tempfile.TemporaryDirectory(prefix="robustmm-demo-") as checkpoints:
        watchers = [StepReporter(advance), *callbacks]
        train(model, data.train, data.val, train_config, out_dir=checkpoints, callbacks=watchers)
    train_seconds = round(time.perf_counter() - start, 1)
    trainable = model.trainable_parameter_counts()["total_trainable"]
    if save_to is not None:
        model.save_pretrained(save_to / f"{method}-seed{seed}")
    size = len(data.test)
    scenarios = {s["name"]: {m: torch.full((size,), m in s["available"]) for m in data.encoders} for s in data.scenarios}
    logits, labels = scenario_logits(model, data.test, scenarios, batch_size=64, precision=config.precision)
    seconds = round(time.perf_counter() - start, 1)
    return [
        {"method": method, "seed": seed, "scenario": name, "seconds": seconds, "train_seconds": train_seconds,
         "trainable_parameters": trainable,
         "accuracy": compute_metrics(logits[name], labels, multilabel=False)["accuracy"],
         "per_class": dict(zip(data.class_names, per_class_scores(logits[name], labels, multilabel=False))),
         "correct": (logits[name].argmax(-1) == labels).tolist(), "logits": logits[name]}
        for name in scenarios
    ]


_WORKER: dict = {}


def _start_worker(config: DemoConfig, steps, save_to: Path | None, parent_pid: int, modules: list[str]) -> None:
    """Each worker process imports the libraries and renders the data itself, side by side with the others,
    instead of waiting for the main process to do both and send the data over. Its temporary files go into a
    scratch folder of its own, removed when it is stopped or its parent dies (`end_with_parent`). A spawned
    process starts with the package's own methods only: it imports the modules of the parent's outside ones
    (`outside_modules`)."""
    from multiprocessing.util import Finalize

    from .console import quiet_libraries
    from .registry import import_modules

    scratch = tempfile.mkdtemp(prefix="robustmm-demo-worker-")
    tempfile.tempdir = scratch
    # At a normal exit, after multiprocessing has removed its own temporary folder (priority -100) from inside it
    Finalize(None, remove_folder, (scratch,), exitpriority=-101)
    end_with_parent(parent_pid, cleanup=lambda: remove_folder(scratch))  # idempotent: either may run first
    import_modules(modules)
    quiet_libraries()
    _WORKER.update(config=config, data=make_data(config), steps=steps, save_to=save_to)


def _check_in_worker() -> None:
    check_methods(_WORKER["config"], _WORKER["data"])


def _run_in_worker(method: str, seed: int, threads: int) -> list[dict]:
    import torch

    torch.set_num_threads(threads)
    return train_and_score(
        _WORKER["config"], _WORKER["data"], method, seed, _WORKER["steps"].put, save_to=_WORKER["save_to"]
    )


def run_demo(config: DemoConfig, out_dir: str | Path | None = None, progress: bool = True, log=print) -> dict:
    start = time.perf_counter()
    config = replace(config, precision=resolve_precision(config.precision))
    jobs = [(method, seed) for seed in config.seeds for method in config.methods]
    workers = max(1, min(config.workers, len(jobs), available_cores()))
    threads = job_threads(len(jobs), workers, available_cores())
    bar = tqdm(total=len(jobs) * config.steps_per_run, desc="training steps", unit="step", disable=not progress)
    models = None if out_dir is None else Path(out_dir) / "models"
    write = bar.write if progress else log
    runs = []

    def finished(rows: list[dict]) -> None:
        runs.extend(rows)
        scores = ", ".join(f"{r['scenario']} {r['accuracy']:.3f}" for r in rows)
        write(f"{rows[0]['method']} (seed {rows[0]['seed']}): {scores} [{rows[0]['seconds']} s]")

    write(f"training {len(jobs)} models ({', '.join(config.methods)} x {len(config.seeds)} seeds) on "
          f"{config.train_size} complete samples, {workers} at a time")
    if workers == 1:
        from .console import quiet_libraries

        quiet_libraries()
        data = make_data(config)
        check_methods(config, data)
        with children_end_with_us():  # SIGTERM ends the run like CTRL-C, which removes its scratch folder
            for method, seed in jobs:
                finished(train_and_score(config, data, method, seed, bar.update, save_to=models))
    else:
        context = get_context("spawn")
        steps = context.Queue()
        listener = threading.Thread(target=_drain, args=(steps, bar), daemon=True)
        listener.start()
        start_args = (config, steps, models, os.getpid(), outside_modules())
        with ProcessPoolExecutor(workers, context, _start_worker, start_args) as pool, children_end_with_us():
            pool.submit(_check_in_worker).result()
            runs_started = [pool.submit(_run_in_worker, *job, n) for job, n in zip(jobs, threads)]
            for future in as_completed(runs_started):
                finished(future.result())
        steps.put(None)
        listener.join()
    bar.close()
    scenarios = benchmark_of(config).scenarios()
    bayes_correct = bayes_correct_on_test(config, scenarios)
    for scenario in scenarios:
        scenario["bayes_accuracy_test"] = float(bayes_correct[scenario["name"]].mean())
    correct = {(r["method"], r["seed"], r["scenario"]): np.array(r.pop("correct"), dtype=bool) for r in runs}
    test_logits = {(r["method"], r["seed"], r["scenario"]): r.pop("logits") for r in runs}
    for run in runs:
        run["p_above_bayes"] = mcnemar_above(correct[run["method"], run["seed"], run["scenario"]],
                                             bayes_correct[run["scenario"]])
    order = {job: index for index, job in enumerate(jobs)}
    runs.sort(key=lambda r: order[r["method"], r["seed"]])
    result = {
        "scenarios": scenarios,
        "runs": runs,
        "sweeps": missing_rate_sweeps(config, correct),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "config": asdict(config),
        "above_bayes": [run for run in runs if run["p_above_bayes"] < ABOVE_BAYES_P],
    }
    if out_dir is not None:
        write_outputs(result, Path(out_dir))
        import torch

        from .report import build_report, from_demo

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the small encoders run as fast on one core, and do not stall on a busy machine
        try:
            build_report(from_demo(result, models, test_logits), Path(out_dir) / "report", log=write)
        finally:
            torch.set_num_threads(threads)
    return result


def _drain(steps, bar) -> None:
    """Move the workers' step reports onto the progress bar until the closing None."""
    while (step := steps.get()) is not None:
        bar.update(step)


ABOVE_BAYES_P = 0.001
"""A run whose McNemar p-value against the Bayes classifier is below this is flagged: no model beats the Bayes
classifier on average, so beating it on the same samples beyond chance means information leaks into the model."""


def bayes_correct_on_test(config: DemoConfig, scenarios: list[dict]) -> dict[str, np.ndarray]:
    """Per scenario, which test samples the generator's own Bayes classifier gets right (from the latent messages
    of each sample: nothing is rendered). Its accuracy on these samples differs from the population limit by
    sampling error, so a model is judged against it sample by sample (`mcnemar_above`)."""
    benchmark = benchmark_of(config)
    latents = [benchmark.latent("test", index) for index in range(config.test_size)]
    labels = np.array([latent.label for latent in latents])
    return {
        s["name"]: benchmark.bayes_posterior(latents, tuple(s["available"])).argmax(1) == labels for s in scenarios
    }


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
    """Whether `folder` holds what `write_outputs` writes (a results.json with scenarios and runs)."""
    try:
        result = load_json((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(result, dict) and {"scenarios", "runs"} <= set(result)


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
    result = run_demo(config, args.out, progress=not args.no_progress)
    print(format_table(result))
    if result["above_bayes"]:
        print(f"WARNING: {len(result['above_bayes'])} run(s) beat the Bayes classifier on the same samples "
              f"(McNemar p < {ABOVE_BAYES_P}): {result['above_bayes']}")
    if args.out:
        print(f"wrote {Path(args.out) / 'results.json'}, {Path(args.out) / 'accuracy.png'} and the report "
              f"{Path(args.out) / 'report' / 'report.html'}")
