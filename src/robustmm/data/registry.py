"""A name -> dataset class registry filled by the `@register_dataset` decorator of each reader."""

from __future__ import annotations

from pathlib import Path

from ..registry import Registry

DATASETS = Registry(
    "dataset",
    "name",
    builtin={
        name: f"robustmm.data.datasets.{name}:{cls}"
        for name, cls in {
            "ave": "AVE",
            "crema_d": "CremaD",
            "food101": "Food101",
            "generic": "Generic",
            "hateful_memes": "HatefulMemes",
            "kinetics_sounds": "KineticsSounds",
            "mmimdb": "MMIMDb",
            "synthetic": "Synthetic",
        }.items()
    },
)


def register_dataset(name: str):
    """Class decorator: make a `MultimodalDataset` subclass available as `get_dataset(name, ...)`."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    return DATASETS.names()


def get_dataset_class(name: str) -> type:
    """The `MultimodalDataset` subclass registered as `name`."""
    return DATASETS.get(name)


def get_dataset(name: str, root: str | Path, split: str = "train", **options):
    """Read split `split` of dataset `name` from `root`; `options` go to the reader (see its docstring)."""
    return get_dataset_class(name)(root, split, **options)
