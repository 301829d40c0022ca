"""The run configuration: one small dataclass tree, read from YAML and overridden from the command line.

A config names the data (`dataset`), the missing protocol (`protocol`), the model (`model`), the training
options (`train`, exactly `TrainConfig`), the default evaluation scenarios (`evaluation`) and the run directory
(`out`). Unknown keys are errors that name the key and the known ones, so a typo never silently falls back to a
default. Values are converted to the declared types (`lr: 1e-3` is a float although YAML reads it as a string).
"""

from __future__ import annotations

import copy
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

from .checks import checked_value
from .data.protocol import MissingProtocol
from .training import TrainConfig


class ConfigError(ValueError):
    """A bad config file, key or value; the message names it."""


@dataclass
class DatasetSection:
    name: str
    """A registered dataset (`robustmm.data.list_datasets()`), e.g. mmimdb, food101, generic."""
    root: str
    """The folder the reader reads; relative paths are taken from the working directory."""
    options: dict[str, Any] = field(default_factory=dict)
    """Reader options (see the reader's docstring), e.g. `plots: each` for MM-IMDb."""


@dataclass
class ModelSection:
    method: str = "cmpt"
    encoders: dict[str, Any] = field(default_factory=dict)
    """Modality -> hub id or local path, or a mapping of `EncoderConfig` fields (name_or_path, max_length,
    num_frames, kind, target_modules, keep_backbone_dropout). Every modality of the dataset needs one."""
    options: dict[str, Any] = field(default_factory=dict)
    """Options of the method (`build_model`), e.g. align_weight, adapter, rank. The seed is `train.seed`."""
    sources: dict[str, str] = field(default_factory=dict)
    """Where the run's outside method, plug-ins and fusion live (name -> module:Class), recorded by `robustmm train`
    for the messages of a process that does not know them; never imported on its say."""


@dataclass
class EvaluationSection:
    """What `robustmm evaluate` runs when not told otherwise."""

    scenarios: list[str] = field(default_factory=lambda: ["complete", "missing"])
    """complete, missing (each modality entirely missing), sweep:<modality> (or sweep for every modality), grid."""
    rates: list[float] | None = None
    """Missing rates for sweeps and the grid; None: 0%, 10%, ..., 100% for sweeps and 70% for the grid."""
    batch_size: int = 32

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.rates is not None and not all(0.0 <= rate <= 1.0 for rate in self.rates):
            raise ValueError(f"rates must be missing rates in [0, 1], got {self.rates}")


@dataclass
class RunConfig:
    dataset: DatasetSection
    protocol: MissingProtocol = field(default_factory=MissingProtocol)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    out: str = "runs/{dataset}/{method}/seed{seed}"
    """The run directory; {dataset}, {method}, {seed}, {missing_type} and {missing_rate} (the training missing
    rate in %) are filled in."""
    imports: list[str] = field(default_factory=list)
    """Modules that `robustmm train` imports before reading the rest, so that the outside methods, plug-ins and
    datasets they register are known (as `--import`). A run directory records them; the commands that read a
    run (evaluate, calibrate, report, predict) do not import them on its say, but name them in their message."""

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


RUN_CONFIG = "config.yaml"
"""The resolved config's file name in a run directory."""
EXECUTION_KEYS = ("train.progress_bar", "train.num_workers", "train.log_every_n_steps", "imports", "model.sources")
"""Config keys that change how a run executes or finds its code, not what it computes."""
FLAG_HINTS = {"dataset.name": "--dataset", "dataset.root": "--root"}
"""Where a required value can be given on the command line."""


CONFIG_MAX_BYTES = 1 << 20
"""A config file larger than this (1 MiB) is refused: real ones take a few hundred bytes."""


class _AliasFreeLoader(yaml.SafeLoader):
    """YAML without aliases (`*name`): a few hundred bytes of nested aliases expand to billions of values (the
    "billion laughs"), which hang whatever walks the config. Configs have no use for them; anchors alone are
    harmless and allowed."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) are not supported in configs; "
                "write the value out"
            )
        return super().compose_node(parent, index)


def load_yaml(text: str):
    """`yaml.safe_load` without aliases; nesting too deep for the parser is a ConfigError too."""
    try:
        return yaml.load(text, Loader=_AliasFreeLoader)
    except RecursionError:
        raise ConfigError("nested too deeply") from None


# ----- shipped configs -----------------------------------------------------------------------------------------


def shipped_configs() -> list[str]:
    folder = resources.files("robustmm").joinpath("configs")
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def config_source(name_or_path: str) -> tuple[str, str]:
    """(text, where) of a config given as a file path or as the name of a shipped config."""
    path = Path(name_or_path)
    if path.is_file():
        if path.stat().st_size > CONFIG_MAX_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes; a config holds at most {CONFIG_MAX_BYTES}")
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 ({error.reason} at byte {error.start})") from None
    shipped = resources.files("robustmm").joinpath("configs", f"{name_or_path.removesuffix('.yaml')}.yaml")
    if shipped.is_file():
        return shipped.read_text(), f"shipped config {name_or_path}"
    raise FileNotFoundError(
        f"config {name_or_path!r} is neither a file nor a shipped config ({', '.join(shipped_configs())})"
    )


# ----- overrides -----------------------------------------------------------------------------------------------


def parse_assignment(text: str, flag: str = "--set") -> tuple[str, Any]:
    """`key.path=value` with a YAML value (`3`, `[a, b]`, `{image: image}`, `null`)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} expects {'key.path' if flag == '--set' else 'key'}=value, got {text!r}")
    try:
        return key.strip(), load_yaml(value) if value.strip() else ""
    except (yaml.YAMLError, ConfigError) as error:
        raise ConfigError(f"{flag} {text}: the value is not valid YAML: {error}") from error


def check_key(key: str, origin: str) -> None:
    """Reject a dotted key that the schema does not have; free-form mappings (options, encoders) accept any."""
    schema, walked = RunConfig, []
    for part in key.split("."):
        if not (isinstance(schema, type) and is_dataclass(schema)):
            return
        names = {f.name: f for f in fields(schema)}
        if part not in names:
            where = ".".join(walked) or "the config"
            raise ConfigError(f"{origin}: unknown key {key!r}; {where} has {', '.join(names)}")
        walked.append(part)
        schema = typing.get_type_hints(schema)[part]


def apply_override(raw: dict, key: str, value: Any, origin: str) -> None:
    """Set `key` (dotted) in the raw config mapping, creating intermediate mappings.

    A string for an encoder that the config spells out as a mapping replaces its `name_or_path` only, so that
    `--text-encoder PATH` keeps the config's `max_length`.
    """
    check_key(key, origin)
    node, parts = raw, key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: {'.'.join(parts[: depth + 1])} is {child!r}, not a mapping")
        node = child
    is_encoder = len(parts) == 3 and parts[:2] == ["model", "encoders"]
    if is_encoder and isinstance(node.get(parts[-1]), dict) and isinstance(value, str):
        node[parts[-1]]["name_or_path"] = value
    else:
        node[parts[-1]] = value


# ----- building and checking -----------------------------------------------------------------------------------


def _union_members(hint) -> tuple | None:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    members = _union_members(hint)
    if members is not None:
        if value is None and type(None) in members:
            return None
        # Try the strictest types first, so that "2" becomes 2 for `int | str` and "auto" stays a string.
        for member in sorted((m for m in members if m is not type(None)), key=lambda m: m is str):
            try:
                return _coerce(value, member, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a {' or '.join(getattr(m, '__name__', str(m)) for m in members)}")
    if is_dataclass(hint):
        return build(hint, value, where)
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is typing.Literal:
        try:
            return checked_value(value, hint, where)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint) or (Any,)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is float:
        if not isinstance(value, bool):
            try:
                return float(value)
            except (TypeError, ValueError):
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise TypeError(f"{where}: unsupported config type {hint!r}")


def build(cls: type, raw: Any, where: str = "") -> Any:
    """An instance of the dataclass `cls` from a mapping: unknown keys, missing required keys and values of
    the wrong type are errors naming the key."""
    label = where or "the config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{label}: expected a mapping, got {raw!r}")
    declared = fields(cls)
    known = [f.name for f in declared]
    unknown = [k for k in raw if k not in known]
    if unknown:
        keys = ", ".join(repr(f"{where}.{k}" if where else k) for k in unknown)
        raise ConfigError(f"unknown key {keys}; {label} has {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in declared:
        key = f"{where}.{f.name}" if where else f.name
        if f.name in raw:
            values[f.name] = _coerce(raw[f.name], hints[f.name], key)
        elif f.default is MISSING and f.default_factory is MISSING:
            hint = f" (or {FLAG_HINTS[key]})" if key in FLAG_HINTS else ""
            raise ConfigError(f"{key} is required: set it in the config{hint}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{label}: {error}") from error


def load_config(
    source: str | None = None, overrides: list[tuple[str, Any, str]] = (), import_code: bool = True
) -> RunConfig:
    """The run config from a YAML file or shipped name (optional), then `(key, value, origin)` overrides in
    order. Errors name the file or the override that caused them. With `import_code` (a config the user gives
    to train), its `imports` are imported first; without (a stored run's), an unknown method's error names them."""
    raw, where = {}, "command line"
    if source is not None:
        text, where = config_source(source)
        try:
            raw = load_yaml(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{where}: not valid YAML: {error}") from error
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping of sections, got {type(raw).__name__}")
    return config_from_raw(raw, overrides, where, import_code)


def config_from_raw(
    raw: dict, overrides: list[tuple[str, Any, str]] = (), where: str = "command line", import_code: bool = True
) -> RunConfig:
    """The run config from an already read mapping of sections (changed in place by the overrides); errors name
    `where` it came from. `import_code` as in `load_config`."""
    from .registry import UnknownNameError, import_modules, unknown_code_message

    apply_method_settings(raw, overrides, where)
    for key, value, origin in overrides:
        apply_override(raw, key, value, origin)
    try:
        config = build(RunConfig, raw)
        if import_code:
            import_modules(config.imports, "imports:")
        config.model.options = checked_model_options(config.model)
    except UnknownNameError as error:
        if import_code:
            raise ConfigError(f"{where}: model: {error}") from error
        raise ConfigError(unknown_code_message(where, error, config.model.sources, config.imports)) from error
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error
    return config


def apply_method_settings(raw: dict, overrides: Sequence[tuple[str, Any, str]], where: str) -> None:
    """A config's `by_method.<method>`: dotted keys (`train.lr`, `model.options.module_lr_scale`) that apply when
    the run's method, after the overrides, is that method: the paper configs give each method its source's
    settings. They go in before the overrides, so that the command line still wins."""
    settings = raw.pop("by_method", None) or {}
    if not isinstance(settings, dict) or not all(isinstance(v, dict) for v in settings.values()):
        raise ConfigError(f"{where}: by_method must map method names to mappings of dotted keys")
    probe = copy.deepcopy(raw)
    for key, value, origin in overrides:
        apply_override(probe, key, value, origin)
    method = (probe.get("model") or {}).get("method", ModelSection.method)
    for key, value in settings.get(method, {}).items():
        apply_override(raw, key, value, f"{where}: by_method.{method}.{key}")


def checked_model_options(section: ModelSection) -> dict[str, Any]:
    """The model options, each converted to its declared type. An option must belong to the run's method or to
    another registered one (which the run then leaves out with a note: a shipped CMPT config trains `dropout`
    too); anything else is the typo it looks like, reported now rather than after the data is read."""
    from .registry import METHODS

    own = METHODS.get(section.method).option_fields()
    known = {}
    if any(key not in own for key in section.options):
        for name in METHODS.names():
            known.update(METHODS.get(name).option_fields())
    checked = {}
    for key, value in section.options.items():
        hint = own.get(key, known.get(key, (None,)))[0]
        if hint is None:
            raise ConfigError(
                f"model.options.{key}: no method has this option; {section.method}'s are {', '.join(own)}"
            )
        checked[key] = _coerce(value, hint, f"model.options.{key}")
    own_options = {k: v for k, v in checked.items() if k in own and k not in ("class_names", "multilabel", "seed")}
    try:
        METHODS.get(section.method).check_options(own_options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.options: {error}") from error
    return checked


def read_run_config(path: str | Path) -> RunConfig:
    """The resolved config that a run directory stores."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} holds no {path.name}; is it a run directory of `robustmm train`?")
    return load_config(str(path), import_code=False)


def _flat(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(first: RunConfig, second: RunConfig, ignore: Sequence[str] = ()) -> list[str]:
    """'key: a -> b' for each config value that differs, except under the `ignore` keys."""
    a, b = _flat(first.to_dict()), _flat(second.to_dict())
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key) and not any(key == i or key.startswith(f"{i}.") for i in ignore)
    ]
