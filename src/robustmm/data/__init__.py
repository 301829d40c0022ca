"""Datasets, the missing-modality protocol and the generated benchmark of the demo.

Names are imported on first use (see `robustmm/__init__.py`): the command line's data options need the
protocol, not PyTorch.
"""

from __future__ import annotations

from ..lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
