"""A training run as a directory: everything needed to know, resume and re-evaluate what was trained.

    RUN_DIR/
      config.yaml         the resolved config (every default filled in; `robustmm evaluate` reads it)
      protocol.json       the missing protocol, its hash and per-split availability counts
      missing_tables/     the cached missing tables of the protocol and of evaluated scenarios
      checkpoints/        last.ckpt (resume) and best.ckpt (selected on validation)
      logs/, tensorboard/ CSV and TensorBoard logs, one version per attempt
      model/              the selected model (`robustmm.load_model`)
      metrics.json        validation and test metrics of the selected model, with per-class scores
      .lock               locked while a `robustmm train` works here (its pid and start time)

Starting the same command again resumes a killed run from its last checkpoint and ends with the metrics an
uninterrupted run has; a run whose metrics are written is complete and is not trained again. A directory that
holds a run of a different config, or that another `robustmm train` is working in, is refused rather than mixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from .atomic import atomic_write_text
from .config import EXECUTION_KEYS, RUN_CONFIG, ConfigError, RunConfig, config_differences, read_run_config
from .data.protocol import bind_kind
from .evaluation import dataset_metrics, inference_device, open_split, parse_scenarios, score
from .metrics import METRICS
from .precision import AUTO, resolve_precision
from .registry import build_model, model_sources
from .training import TrainConfig, train

SPLITS = ("train", "val", "test")
LOCK = ".lock"
RESERVED_OPTIONS = {
    "seed": "train.seed (--seed)",
    "num_classes": "the dataset",
    "multilabel": "the dataset",
    "class_names": "the dataset",
    "encoders": "model.encoders",
}
"""Model options that the run sets itself, and where they come from instead."""


def is_global_zero() -> bool:
    """Whether this process writes the run's files (DDP starts one process per device)."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def resolve(config: RunConfig) -> RunConfig:
    """Fill in the run directory template and make paths absolute, so the stored config works from anywhere."""
    fields = {
        "dataset": config.dataset.name,
        "method": config.model.method,
        "seed": config.train.seed,
        "missing_type": config.protocol.missing_type,
        "missing_rate": round(100 * config.protocol.train_missing_rate),
    }
    try:
        out = config.out.format(**fields)
    except (KeyError, IndexError, ValueError) as error:
        names = ", ".join(f"{{{name}}}" for name in fields)
        raise ConfigError(f"out: {config.out!r} may use {names} only ({error!r})") from None
    dataset = replace(config.dataset, root=str(Path(config.dataset.root).expanduser().resolve()))
    encoders = {modality: _absolute_encoder(value) for modality, value in config.model.encoders.items()}
    out = Path(out).expanduser().resolve()
    return replace(
        config,
        out=str(out),
        dataset=dataset,
        model=replace(config.model, encoders=encoders),
        train=replace(config.train, precision=run_precision(config.train, out)),
    )


def run_precision(train: TrainConfig, run_dir: Path) -> str:
    """The concrete precision of a run: as given, or for `auto` the one that the run directory already records
    (a run resumed on another machine continues as it started), else the one this machine's hardware suits."""
    if train.precision != AUTO:
        return train.precision
    stored = run_dir / RUN_CONFIG
    if stored.is_file():
        recorded = read_run_config(stored).train.precision
        if recorded != AUTO:
            return recorded
    return resolve_precision(AUTO, train.accelerator)


def _absolute_encoder(value):
    """A local encoder folder as an absolute path; hub ids unchanged."""
    if isinstance(value, dict) and "name_or_path" in value:
        return {**value, "name_or_path": _absolute_encoder(value["name_or_path"])}
    if isinstance(value, str) and Path(value).expanduser().exists():
        return str(Path(value).expanduser().resolve())
    return value


def bind_to_dataset(config: RunConfig, modalities: dict[str, str]) -> RunConfig:
    """`config` with kinds (`image` from `--image-encoder` or `--missing-type image`) bound to the dataset's
    modality of that kind (`bind_kind`; `modalities`: name -> kind), e.g. a generic dataset's `photo`. Done
    before the config is compared with a stored one and stored, so that the run directory names what was trained
    and `--image-encoder X` and `--set model.encoders.photo=X` are one run. An encoder keyed by a kind gives way
    where every modality of that kind has its own (a shipped config's `image` beside `model.encoders.photo`)."""
    given = config.model.encoders
    encoders = {}
    for key, value in given.items():
        of_kind = [m for m, kind in modalities.items() if kind == key]
        if key not in modalities and of_kind and all(m in given for m in of_kind):
            continue
        hint = f"instead of model.encoders.{key}, set one for each with --set model.encoders.<name>=ID_OR_PATH"
        encoders[bind_kind(key, modalities, hint)] = value
    return replace(config, protocol=config.protocol.bound(modalities), model=replace(config.model, encoders=encoders))


def _with_kind(value, kind: str):
    """The encoder `value` reading a modality of `kind` unless it names its own: the dataset knows each
    modality's kind, which neither a name such as `photo` nor every model family tells."""
    if isinstance(value, str):
        return {"name_or_path": value, "kind": kind}
    if isinstance(value, dict):
        return {**value, "kind": value.get("kind") or kind}
    return value


def build_run_model(config: RunConfig, dataset):
    """The model of `config.model` for the modalities and classes of `dataset`."""
    section = config.model
    reserved = [key for key in section.options if key in RESERVED_OPTIONS]
    if reserved:
        raise ConfigError("; ".join(f"model.options.{key} is set by {RESERVED_OPTIONS[key]}" for key in reserved))
    modalities = list(dataset.modalities)
    missing = [m for m in modalities if m not in section.encoders]
    extra = [m for m in section.encoders if m not in modalities]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"no encoder for {', '.join(missing)} (--set model.encoders.{missing[0]}=ID_OR_PATH)")
        if extra:
            problems.append(f"encoders for {', '.join(extra)}, which the dataset does not have")
        raise ConfigError(f"{dataset.name} has modalities {', '.join(modalities)}: {'; '.join(problems)}")
    try:
        return build_model(
            section.method,
            encoders={m: _with_kind(section.encoders[m], kind) for m, kind in dataset.modalities.items()},
            num_classes=dataset.num_classes,
            multilabel=dataset.multilabel,
            class_names=list(dataset.class_names),
            seed=config.train.seed,
            **section.options,
        )
    except TypeError as error:
        raise ConfigError(f"model: {error}") from error


def without_other_methods_options(config: RunConfig, log=print) -> RunConfig:
    """`config` without the model options that belong to other methods only, each left out with a note, so that
    `--method dropout` on a shipped CMPT config (which sets `align_denominator`) trains instead of refusing.
    (An option that no registered method has was refused when the config loaded.)"""
    from .registry import METHODS

    def options_of(name: str) -> set[str]:
        return set(METHODS.get(name).option_names())

    own = options_of(config.model.method)
    others = {name: options_of(name) for name in METHODS.names() if METHODS.key(name) != METHODS.key(config.model.method)}
    kept = {}
    for key, value in config.model.options.items():
        owners = [name for name, names in others.items() if key in names]
        if key not in own and owners:
            log(f"note: model.options.{key} is an option of {', '.join(owners)}, not of {config.model.method}: left out")
            continue
        kept[key] = value
    return replace(config, model=replace(config.model, options=kept))


def check_before_training(config: RunConfig, dataset) -> None:
    """Mistakes that would otherwise surface only after training: metric names, the missing type and the
    evaluation scenarios for this dataset's modalities."""
    unknown = [name for name in config.train.metrics if name not in METRICS]
    if unknown:
        raise ConfigError(f"train.metrics: unknown metric(s) {', '.join(unknown)}; available: {', '.join(METRICS)}")
    config.protocol.targets(list(dataset.modalities))
    parse_scenarios(
        config.evaluation.scenarios, dataset.modalities, config.evaluation.rates, config.protocol.both_ratio
    )


def check_run_dir(run_dir: Path, config: RunConfig) -> bool:
    """True if `run_dir` holds this run complete; False if it is new or to be resumed; an error if it holds
    something else."""
    stored = run_dir / RUN_CONFIG
    if not stored.is_file():
        if run_dir.exists() and any(path.name != LOCK for path in run_dir.iterdir()):
            raise ConfigError(f"{run_dir} is not empty and holds no {RUN_CONFIG}: choose another --out")
        return False
    differences = config_differences(read_run_config(stored), config, EXECUTION_KEYS)
    if differences:
        raise ConfigError(
            f"{run_dir} holds a run of another config ({'; '.join(differences[:5])}); "
            "choose another --out, or remove the directory to start over"
        )
    return (run_dir / "metrics.json").is_file()


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold `RUN_DIR/.lock`, so that a second `robustmm train` on the directory is refused instead of writing
    beside the first. The OS releases an flock when its process ends, however it ends: a killed run leaves the
    file but no lock."""
    try:
        import fcntl
    except ImportError:  # Windows has no flock: runs go unguarded there
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK, "a+") as handle:  # "a+" keeps the holder's pid and time readable until locked
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "pid unknown"
            raise ConfigError(
                f"{run_dir} is in use by another robustmm train ({holder}); wait for it or choose another --out"
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        yield


def checked_config(config: RunConfig, train_split, log=print) -> RunConfig:
    """The resolved `config` as its run stores it (the dataset's metrics and modality names filled in, other
    methods' options left out), checked against the dataset: what `robustmm train` and a sweep check first."""
    config = resolve(config)
    if config.train.metrics is None:
        config = replace(config, train=replace(config.train, metrics=dataset_metrics(train_split)))
    config = without_other_methods_options(bind_to_dataset(config, train_split.modalities), log)
    check_before_training(config, train_split)
    return config


def train_run(config: RunConfig, log=print, score_test: bool = True) -> Path:
    """Train the run `config` describes into its directory (resuming it if it was interrupted); returns it.
    `score_test=False` leaves the test split to an evaluation that follows (a sweep's cell: `evaluate_runs` with
    `run_test`), which adds metrics.json's `test` from its own pass, so that the test set is encoded once."""
    config = resolve(config)
    splits = {split: open_split(config.dataset, split) for split in SPLITS}
    config = checked_config(config, splits["train"], log)
    run_dir = Path(config.out)
    writer = is_global_zero()
    if writer and check_run_dir(run_dir, config):
        log(f"{run_dir} is complete; its metrics are in {run_dir / 'metrics.json'}")
        return run_dir
    fresh = not (run_dir / RUN_CONFIG).is_file()
    created = not run_dir.exists()
    with run_lock(run_dir) if writer else contextlib.nullcontext():
        try:
            _train_and_score(config, splits, run_dir, writer, log, score_test)
        except BaseException:
            if writer and fresh:
                remove_unstarted_run(run_dir, created)
            raise
    return run_dir


def remove_unstarted_run(run_dir: Path, created: bool) -> None:
    """After a new run failed before its first checkpoint (a setting refused by Lightning, an interrupt), remove
    what it wrote: a `config.yaml` left behind would make the corrected command a run "of another config".
    Once a checkpoint exists the run is kept, to be resumed."""
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return
    for path in [run_dir] if created else list(run_dir.iterdir()):  # the lock's file too: nothing is left
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _train_and_score(config: RunConfig, splits: dict, run_dir: Path, writer: bool, log, score_test: bool) -> None:
    """`train_run` in its checked (and, by the writer, locked) directory."""
    model = build_run_model(config, splits["train"])
    sources = model_sources(model.method, model.plugins, model.config.fusion)
    config = replace(config, model=replace(config.model, sources=sources))
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / RUN_CONFIG, config.to_yaml())
    tables = run_dir / "missing_tables"
    views = {split: dataset.with_protocol(config.protocol, cache_dir=tables) for split, dataset in splits.items()}
    if writer:
        summaries = {split: view.summary() for split, view in views.items()}
        protocol = {"hash": config.protocol.hash(), "description": config.protocol.describe(),
                    **config.protocol.to_dict(), "splits": summaries}
        atomic_write_text(run_dir / "protocol.json", json.dumps(protocol, indent=2))
        log(config.protocol.describe())
        for split, summary in summaries.items():
            patterns = ", ".join(f"{name} {entry['samples']}" for name, entry in summary["patterns"].items())
            log(f"  {split:<5} {summary['samples']:>7} samples: {patterns}")
        log(f"{config.model.method} on {config.dataset.name} -> {run_dir}")
        model.print_trainable_parameters()
    train(model, views["train"], views["val"], config.train, run_dir)
    if not is_global_zero():
        return
    model.to(inference_device(config.train.accelerator))
    best = run_dir / "checkpoints" / "best.ckpt"
    selected = {
        "monitor": f"val/{config.train.metrics[0]}",
        "epoch": torch.load(best, map_location="cpu", weights_only=True)["epoch"],
        "checkpoint": str(best.relative_to(run_dir)),
    }
    batch_size, workers = config.evaluation.batch_size, config.train.num_workers
    metrics = {
        "dataset": config.dataset.name,
        "method": config.model.method,
        "seed": config.train.seed,
        "protocol": config.protocol.hash(),
        "selected": selected,
        "val": score(model, views["val"], config.train.metrics, batch_size, workers, config.train.precision),
    }
    if score_test:
        metrics["test"] = score(model, views["test"], config.train.metrics, batch_size, workers, config.train.precision)
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    for split in ("val", "test") if score_test else ("val",):
        shown = ", ".join(f"{name} {100 * value:.2f}" for name, value in metrics[split]["metrics"].items())
        log(f"{split}: {shown}")
    log(f"selected epoch {selected['epoch']} on {selected['monitor']}; wrote {run_dir / 'metrics.json'}")
