"""robustmm: multimodal classification that stays accurate when modalities are missing.

The names below are imported on first use, so that `import robustmm` (and the command line's `--help`) costs
milliseconds: building a model loads PyTorch, transformers and peft; training also loads Lightning.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "AdapterConfig": "adapters",
    "Batch": "processing",
    "EncoderConfig": "encoders",
    "Fusion": "fusions",
    "ModelConfig": "model",
    "ModelOutput": "model",
    "MultimodalModel": "model",
    "TrainConfig": "training",
    "build_model": "registry",
    "calibrate_run": "calibration",
    "evaluate": "training",
    "fit_temperatures": "calibration",
    "list_methods": "registry",
    "load_model": "serialisation",
    "predict_file": "predict",
    "register_fusion": "registry",
    "register_method": "registry",
    "train": "training",
    "write_example": "example",
    "write_report": "report",
}
"""Public name -> the module of this package that defines it."""

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
