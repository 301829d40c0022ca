"""Datasets, the missing-modality protocol and the generated benchmark of the demo.

Names are imported on first use (see `robustmm/__init__.py`): the command line's data options need the
protocol, not PyTorch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DatasetError": "base",
    "MultimodalDataset": "base",
    "ProtocolView": "base",
    "Record": "base",
    "MissingProtocol": "protocol",
    "MissingTable": "protocol",
    "Scenario": "protocol",
    "get_dataset": "registry",
    "get_dataset_class": "registry",
    "list_datasets": "registry",
    "register_dataset": "registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'robustmm.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
