"""A name -> dataset class registry filled by the `@register_dataset` decorator of each reader."""

from __future__ import annotations

from pathlib import Path

from .base import MultimodalDataset

_DATASETS: dict[str, type[MultimodalDataset]] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def register_dataset(name: str):
    """Class decorator: make a `MultimodalDataset` subclass available as `get_dataset(name, ...)`."""

    def register(cls: type[MultimodalDataset]) -> type[MultimodalDataset]:
        key = _key(name)
        if key in _DATASETS:
            raise ValueError(f"dataset {key!r} is already registered")
        cls.name = key
        _DATASETS[key] = cls
        return cls

    return register


def _builtin() -> dict[str, type[MultimodalDataset]]:
    from . import datasets  # noqa: F401  (importing the package registers the built-in readers)

    return _DATASETS


def list_datasets() -> list[str]:
    return sorted(_builtin())


def get_dataset_class(name: str) -> type[MultimodalDataset]:
    registry = _builtin()
    if _key(name) not in registry:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(sorted(registry))}")
    return registry[_key(name)]


def get_dataset(name: str, root: str | Path, split: str = "train", **options) -> MultimodalDataset:
    """Read split `split` of dataset `name` from `root`; `options` go to the reader (see its docstring)."""
    return get_dataset_class(name)(root, split, **options)
