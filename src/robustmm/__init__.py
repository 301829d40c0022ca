"""robustmm: multimodal classification that stays accurate when modalities are missing."""

from . import methods  # noqa: F401  (registers the methods)
from .adapters import AdapterConfig
from .encoders import EncoderConfig
from .model import ModelConfig, ModelOutput, MultimodalModel
from .processing import Batch
from .registry import build_model, list_methods, load_model, register_method
from .training import TrainConfig, evaluate, train

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "Batch",
    "EncoderConfig",
    "ModelConfig",
    "ModelOutput",
    "TrainConfig",
    "MultimodalModel",
    "build_model",
    "evaluate",
    "list_methods",
    "load_model",
    "register_method",
    "train",
]
