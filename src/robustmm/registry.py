"""A registry of methods and one factory, `build_model(method, ...)`, plus `load_model(dir)`."""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file

from .model import CONFIG_FILE, WEIGHTS_FILE, MultimodalModel

_METHODS: dict[str, type[MultimodalModel]] = {}


def register_method(name: str):
    """Class decorator: make a `MultimodalModel` subclass available as `build_model(name, ...)`."""

    def register(cls: type[MultimodalModel]) -> type[MultimodalModel]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is already registered")
        cls.method = name
        _METHODS[name] = cls
        return cls

    return register


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[MultimodalModel]:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(list_methods())}")
    return _METHODS[name]


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
