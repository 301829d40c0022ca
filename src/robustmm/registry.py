"""A registry of methods and one factory, `build_model(method, ...)`, plus `load_model(dir)`.

This module imports nothing heavy: the built-in entries are listed by name and imported on first use, so that
`robustmm methods` and `--help` answer without loading PyTorch, and registering a method of one's own is one
decorator.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
from pathlib import Path

from .checks import load_json


class Registry:
    """Names -> classes, filled by a class decorator, so that one factory looks a name up instead of an if/elif
    chain. Names are matched case-insensitively with '-' as '_'; each class gets its name as `attribute`.

    `builtin` maps the names of the package's own entries to "module:Class"; such an entry is imported when it is
    first asked for, and its module must register it under that name.
    """

    def __init__(self, kind: str, attribute: str, builtin: dict[str, str] | None = None):
        self.kind, self.attribute = kind, attribute
        self.builtin = {self.key(name): target for name, target in (builtin or {}).items()}
        self.entries: dict[str, type] = {}

    @staticmethod
    def key(name: str) -> str:
        return name.strip().lower().replace("-", "_")

    def register(self, name: str):
        def decorator(cls: type) -> type:
            key = self.key(name)
            if key in self.entries:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            setattr(cls, self.attribute, key)
            self.entries[key] = cls
            return cls

        return decorator

    def names(self) -> list[str]:
        return sorted(set(self.builtin) | set(self.entries))

    def get(self, name: str) -> type:
        key = self.key(name)
        if key not in self.entries and key in self.builtin:
            importlib.import_module(self.builtin[key].partition(":")[0])
            if key not in self.entries:
                raise RuntimeError(f"{self.builtin[key]} did not register {self.kind} {key!r}")
        if key not in self.entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self.entries[key]

    def summary(self, name: str) -> str:
        """The first line of the entry's docstring, read from its source when it is not imported yet."""
        key = self.key(name)
        if key in self.entries:
            doc = self.entries[key].__doc__
        else:
            module, _, class_name = self.builtin[key].partition(":")
            tree = ast.parse(_source_file(module).read_text())
            found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
            doc = ast.get_docstring(found[0]) if found else None
        lines = (doc or "").strip().splitlines()
        return lines[0] if lines else ""


def _source_file(module: str) -> Path:
    """The file of `module`, found without importing its parent packages (`find_spec` would import them)."""
    top, *rest = module.split(".")
    path = Path(importlib.util.find_spec(top).origin).parent.joinpath(*rest)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


METHODS = Registry(
    "method",
    "method",
    builtin={
        "baseline": "robustmm.methods.baseline:PlaceholderFusion",
        "dropout": "robustmm.methods.baseline:ModalityDropout",
        "cmpt": "robustmm.methods.cmpt:CMPT",
        "map": "robustmm.methods.map:MissingAwarePrompts",
        "rep": "robustmm.methods.rep:ReplayPrompting",
        "molt": "robustmm.methods.molt:MoLT",
    },
)
PLUGINS = Registry("plug-in", "plugin", builtin={"mwam": "robustmm.methods.mwam:MWAM"})
"""Additions to any method (`ModelConfig.plugins`), e.g. `build_model("cmpt", ..., mwam=True)`."""


def register_method(name: str):
    """Class decorator: make a `MultimodalModel` subclass available as `build_model(name, ...)`."""
    return METHODS.register(name)


def list_methods() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> type:
    """The `MultimodalModel` subclass registered as `name`."""
    return METHODS.get(name)


def build_model(method: str = "cmpt", *, encoders: dict, num_classes: int, **options):
    """Build a model of `method` over `encoders` (modality name -> hub id, local path, `EncoderConfig` or dict).

    Options are the method's config fields (see `robustmm.methods`), plus the adapter shorthands `adapter`
    ("lora" / "dora" / "vera"), `rank`, `alpha` and `adapter_dropout`.
    """
    cls = get_method(method)
    return cls(cls.config_from_kwargs(encoders, num_classes, **options))


def load_model(directory: str | os.PathLike):
    """Rebuild a model saved by `save_pretrained`: the encoders are loaded again from their recorded paths.

    A damaged or mismatched file is a `ValueError` that names it: the weights are read before the encoders are
    loaded, so that a truncated file is reported at once.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} holds no {CONFIG_FILE}; is it a directory written by save_pretrained?")
    if not weights_path.is_file():
        raise FileNotFoundError(f"{directory} holds {CONFIG_FILE} but no {WEIGHTS_FILE}; was saving interrupted?")
    try:
        options = load_json(config_path.read_text(encoding="utf-8"))
        if not isinstance(options, dict) or not isinstance(options.get("method"), str):
            raise ValueError("expected a JSON object with a 'method' name")
        version = options.pop("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"format version {version!r} is newer than this robustmm reads ({FORMAT_VERSION})")
        cls = get_method(options.pop("method"))
        config = cls.config_class(**options)
    except (ValueError, TypeError, AttributeError, KeyError) as error:  # a field of the wrong type or shape
        raise ValueError(f"{config_path}: damaged or not written by this version of robustmm: {error}") from error
    try:
        state = cls.upgrade_state_dict(load_file(weights_path), version)
    except SafetensorError as error:
        raise ValueError(f"{weights_path}: damaged or incomplete safetensors file ({error})") from error
    try:
        model = cls(config)
    except ValueError as error:  # an encoder recorded by path was moved or deleted since
        raise ValueError(f"{config_path}: cannot rebuild the model it records: {error}") from error
    try:
        model.load_trainable_state_dict(state)
    except ValueError as error:
        raise ValueError(f"{weights_path}: {error}") from error
    return model
