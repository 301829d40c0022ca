"""A sweep file: a run config (the schema of `robustmm train --config`, optionally on a `base:` config) plus

    grid:    dotted config keys (as `--set` takes them) -> lists of values; every combination is one cell.
             `model.method: all` lists every registered method.
             `--set KEY=VALUE` on a grid key replaces its values (a list, or one value).
    select:  optional {over: [grid keys], metric: val/<metric>}: per combination of the other keys, keep the
             values of `over` whose cells score best on validation (mean over seeds): the same tuning budget for
             every method. Test scores never choose.
    out:     the sweep folder (default sweeps/<file name>); each cell's run directory is OUT/cells/<name>.
    slurm:   resources for `--executor slurm` (partition, time_min, gpus_per_node, cpus_per_task, mem_gb, ...).
    report:  whether to write OUT/report (default true).

Every cell's config is built and checked (keys, types, method, options, metrics, scenarios against the dataset)
before anything trains, so a typo in the last cell does not surface hours in.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..config import ConfigError, RunConfig, apply_override, config_from_raw, config_source, parse_assignment

SEED_KEY = "train.seed"
SWEEP_KEYS = ("base", "grid", "select", "slurm", "report")
"""Keys of a sweep file beside the run config's sections (`out` names the sweep folder)."""
SHIPPED = "sweeps"
"""The package folder of the shipped sweep files."""


@dataclass
class SlurmSection:
    """Resources of each cell's SLURM job (submitit's names); multi-GPU cells train with Lightning's DDP."""

    partition: str | None = None
    time_min: int = 60
    """Time limit of a job in minutes; a cell that reaches it is requeued and resumes."""
    nodes: int = 1
    gpus_per_node: int = 0
    """0: the cells train on CPUs. G > 0: G tasks per node, one GPU each (train.devices = G, strategy ddp)."""
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 64
    """Cells of the job array that run at once (`slurm_array_parallelism`)."""
    max_requeues: int = 3
    """How often a cell that hits the time limit is requeued (preemption requeues without limit)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run in each job before the cell (module load ..., source venv/bin/activate)."""
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    """Further sbatch options, e.g. {account: my_account, qos: high}."""


@dataclass
class Select:
    over: list[str]
    metric: str
    """val/<metric> of the cells' `train.metrics`."""

    @property
    def metric_name(self) -> str:
        return self.metric.removeprefix("val/")


@dataclass
class Cell:
    name: str
    values: dict[str, Any]
    """Grid key -> this cell's value."""
    config: RunConfig
    """Resolved and checked (as its run directory stores it)."""

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)


@dataclass
class Sweep:
    source: str
    out: Path
    grid: dict[str, list]
    cells: list[Cell]
    select: Select | None = None
    slurm: SlurmSection = field(default_factory=SlurmSection)
    report: bool = True
    notes: list[str] = field(default_factory=list)
    """What the checks left out or filled in (e.g. an option that only another method has)."""

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "grid": self.grid,
            "select": None if self.select is None else {"over": self.select.over, "metric": self.select.metric},
            "cells": [{"name": c.name, "values": c.values, "run_dir": str(c.run_dir)} for c in self.cells],
        }


def shipped_sweeps() -> list[str]:
    folder = resources.files("robustmm").joinpath(SHIPPED)
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def shipped_summary(name: str) -> str:
    """The first comment line of a shipped sweep file."""
    text = resources.files("robustmm").joinpath(SHIPPED, f"{name}.yaml").read_text()
    return next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")), "")


def sweep_source(name_or_path: str) -> tuple[str, str, str]:
    """(text, where, stem) of a sweep given as a file or as the name of a shipped sweep."""
    path = Path(name_or_path)
    if path.is_file():
        return path.read_text(), str(path), path.stem
    shipped = resources.files("robustmm").joinpath(SHIPPED, f"{name_or_path.removesuffix('.yaml')}.yaml")
    if shipped.is_file():
        return shipped.read_text(), f"shipped sweep {name_or_path}", name_or_path.removesuffix(".yaml")
    raise FileNotFoundError(
        f"sweep {name_or_path!r} is neither a file nor a shipped sweep ({', '.join(shipped_sweeps())})"
    )


def _merged(base: dict, over: dict) -> dict:
    """`base` with the mappings of `over` merged in key by key (a value that is not a mapping replaces)."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _grid(raw: Any, where: str) -> dict[str, list]:
    from ..registry import METHODS

    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: grid: expected a mapping of dotted config keys to lists of values, got {raw!r}")
    grid = {}
    for key, values in raw.items():
        if key == "model.method" and values == "all":
            values = METHODS.names()
        if not isinstance(values, list):
            raise ConfigError(f"{where}: grid: {key} must list its values ([a, b, ...]), got {values!r}")
        if not values:
            raise ConfigError(f"{where}: grid: {key} lists no values, so the grid expands to zero cells")
        if key == "out" or key.startswith("out."):
            raise ConfigError(f"{where}: grid: out is the sweep's; each cell's run directory is OUT/cells/<name>")
        repeated = sorted({json.dumps(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"{where}: grid: {key} lists {', '.join(repeated)} more than once")
        grid[key] = values
    return grid


def _select(raw: Any, grid: dict, where: str) -> Select | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"over", "metric"}:
        raise ConfigError(f"{where}: select: expected {{over: [grid keys], metric: val/<metric>}}, got {raw!r}")
    over = [raw["over"]] if isinstance(raw["over"], str) else raw["over"]
    unknown = [key for key in over if key not in grid]
    if not over or unknown:
        raise ConfigError(f"{where}: select.over: {unknown or over} must name grid keys ({', '.join(grid)})")
    if SEED_KEY in over:
        raise ConfigError(f"{where}: select.over: {SEED_KEY} cannot be chosen: a seed is not a setting to tune")
    metric = str(raw["metric"])
    if not metric.startswith("val/"):
        raise ConfigError(
            f"{where}: select.metric {metric!r}: select on validation (val/<metric>), never on test"
        )
    return Select(over=list(over), metric=metric)


def cell_names(grid: dict[str, list]) -> list[tuple[str, dict]]:
    """(name, values) of each combination, in grid order; a name shows each key by its last part (`method=cmpt,
    seed=0`), or in full where two keys end alike."""
    ends = [key.rsplit(".", 1)[-1] for key in grid]
    shown = [end if ends.count(end) == 1 else key for key, end in zip(grid, ends)]
    cells = []
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        parts = [f"{label}={value_label(value)}" for label, value in zip(shown, combination)]
        cells.append((",".join(parts), values))
    return cells


def value_label(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return "".join(c if c.isalnum() or c in "-_.+" else "-" for c in text)


def load_sweep(source: str, overrides: list[str] = (), out: str | None = None, check: bool = True) -> Sweep:
    """The sweep `source` describes (a file or a shipped name), every cell's config built and, with `check`,
    checked against its dataset. `overrides` are `key=value` assignments applied to the base of every cell; on a
    grid key, they replace its values."""
    text, where, stem = sweep_source(source)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(raw).__name__}")
    if "base" in raw:
        base_text, base_where = config_source(str(raw.pop("base")))
        base = yaml.safe_load(base_text) or {}
        base.pop("out", None)  # a config's run directory template: the sweep names each cell's directory
        raw = _merged(base, raw)
    grid = _grid(raw.pop("grid", None), where)
    select = _select(raw.pop("select", None), grid, where)
    slurm = _slurm(raw.pop("slurm", None), where)
    report = raw.pop("report", True)
    if not isinstance(report, bool):
        raise ConfigError(f"{where}: report: expected true or false, got {report!r}")
    folder = Path(out or raw.pop("out", None) or Path("sweeps") / stem).expanduser().resolve()
    raw.pop("out", None)
    assignments = [(*parse_assignment(text), f"--set {text}") for text in overrides]
    gridded = {key: value if isinstance(value, list) or value == "all" else [value]
               for key, value, _ in assignments if key in grid}
    grid = _grid({**grid, **gridded}, where) if gridded else grid  # the values of a grid key, not a dead setting
    for key, value, origin in assignments:
        if key not in grid:
            apply_override(raw, key, value, origin)
    cells = []
    for name, values in cell_names(grid):
        cell_overrides = [(key, value, f"{where}: grid {key}={value!r}") for key, value in values.items()]
        cell_overrides += _execution(slurm) + [("out", str(folder / "cells" / name), where),
                                              ("train.progress_bar", False, where)]
        config = config_from_raw(copy.deepcopy(raw), cell_overrides, where)
        cells.append(Cell(name, values, config))
    sweep = Sweep(where, folder, grid, cells, select, slurm, report)
    if check:
        check_cells(sweep)
    return sweep


def _slurm(raw: Any, where: str) -> SlurmSection:
    from ..config import build

    try:
        return build(SlurmSection, raw, "slurm")
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error


def _execution(slurm: SlurmSection) -> list[tuple[str, Any, str]]:
    """Overrides that make cells train on the GPUs that the slurm section asks for; none without GPUs."""
    if slurm.gpus_per_node <= 0:
        return []
    ddp = slurm.gpus_per_node * slurm.nodes > 1
    return [("train.accelerator", "gpu", "slurm.gpus_per_node"), ("train.devices", slurm.gpus_per_node,
            "slurm.gpus_per_node"), ("train.num_nodes", slurm.nodes, "slurm.nodes"),
            *([("train.strategy", "ddp", "slurm.gpus_per_node")] if ddp else [])]


def check_cells(sweep: Sweep) -> None:
    """Resolve every cell against its dataset (each dataset's train split opened once) and check it as `robustmm
    train` would, plus the select metric; errors name the cell."""
    from ..evaluation import open_split
    from ..runs import checked_config, resolve

    splits: dict = {}
    notes: set[str] = set()
    for index, cell in enumerate(sweep.cells):
        try:
            config = resolve(cell.config)
            key = json.dumps([config.dataset.name, config.dataset.root, config.dataset.options], default=str)
            if key not in splits:
                splits[key] = open_split(config.dataset, "train")
            config = checked_config(config, splits[key], log=notes.add)
            if sweep.select and sweep.select.metric_name not in config.train.metrics:
                raise ConfigError(f"select.metric {sweep.select.metric}: the cell scores "
                                  f"{', '.join('val/' + m for m in config.train.metrics)} (train.metrics)")
        except (ValueError, OSError) as error:
            raise ConfigError(f"{sweep.source}: cell {cell.name}: {error}") from error
        sweep.cells[index] = replace(cell, config=config)
    sweep.notes = sorted(notes)

