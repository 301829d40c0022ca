"""A name -> dataset class registry filled by the `@register_dataset` decorator of each reader."""

from __future__ import annotations

from pathlib import Path

from ..registry import Registry
from .base import MultimodalDataset


def _load_builtin() -> None:
    from . import datasets  # noqa: F401  (importing the package registers the built-in readers)


DATASETS = Registry("dataset", "name", load=_load_builtin)


def register_dataset(name: str):
    """Class decorator: make a `MultimodalDataset` subclass available as `get_dataset(name, ...)`."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def get_dataset_class(name: str) -> type[MultimodalDataset]:
    return DATASETS.get(name)


def get_dataset(name: str, root: str | Path, split: str = "train", **options) -> MultimodalDataset:
    """Read split `split` of dataset `name` from `root`; `options` go to the reader (see its docstring)."""
    return get_dataset_class(name)(root, split, **options)
