"""The missing-modality methods, one file each; importing this package registers them."""

from .baseline import DropoutConfig, ModalityDropout, PlaceholderConfig, PlaceholderFusion
from .cmpt import CMPT, CMPTConfig

__all__ = ["CMPT", "CMPTConfig", "DropoutConfig", "ModalityDropout", "PlaceholderConfig", "PlaceholderFusion"]
