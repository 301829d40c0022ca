"""Datasets, the missing-modality protocol and the generated benchmark of the demo."""

from .base import DatasetError, MultimodalDataset, ProtocolView, Record
from .protocol import MissingProtocol, MissingTable, Scenario
from .registry import get_dataset, get_dataset_class, list_datasets, register_dataset

__all__ = [
    "DatasetError",
    "MissingProtocol",
    "MissingTable",
    "MultimodalDataset",
    "ProtocolView",
    "Record",
    "Scenario",
    "get_dataset",
    "get_dataset_class",
    "list_datasets",
    "register_dataset",
]
