"""A registry of methods and one factory, `build_model(method, ...)`, plus `load_model(dir)`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file

from .model import CONFIG_FILE, WEIGHTS_FILE, MultimodalModel

class Registry:
    """Names -> classes, filled by a class decorator, so that one factory looks a name up instead of an if/elif
    chain. Names are matched case-insensitively with '-' as '_'; each class gets its name as `attribute`, and
    `load` (when given) imports the built-in entries on first use."""

    def __init__(self, kind: str, attribute: str, load=None):
        self.kind, self.attribute, self.load = kind, attribute, load
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

    def _loaded(self) -> dict[str, type]:
        if self.load is not None:
            self.load()
        return self.entries

    def names(self) -> list[str]:
        return sorted(self._loaded())

    def get(self, name: str) -> type:
        entries = self._loaded()
        if self.key(name) not in entries:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(sorted(entries))}")
        return entries[self.key(name)]


METHODS = Registry("method", "method")


def register_method(name: str):
    """Class decorator: make a `MultimodalModel` subclass available as `build_model(name, ...)`."""
    return METHODS.register(name)


def list_methods() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> type[MultimodalModel]:
    return METHODS.get(name)


def build_model(method: str = "cmpt", *, encoders: dict, num_classes: int, **options) -> MultimodalModel:
    """Build a model of `method` over `encoders` (modality name -> hub id, local path, `EncoderConfig` or dict).

    Options are the method's config fields (see `robustmm.methods`), plus the adapter shorthands `adapter`
    ("lora" / "dora" / "vera"), `rank`, `alpha` and `adapter_dropout`.
    """
    cls = get_method(method)
    return cls(cls.config_from_kwargs(encoders, num_classes, **options))


def load_model(directory: str | os.PathLike) -> MultimodalModel:
    """Rebuild a model saved by `save_pretrained`: the encoders are loaded again from their recorded paths."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} holds no {CONFIG_FILE}; is it a directory written by save_pretrained?")
    options = json.loads(config_path.read_text())
    cls = get_method(options.pop("method"))
    model = cls(cls.config_class(**options))
    model.load_trainable_state_dict(load_file(directory / WEIGHTS_FILE))
    return model
