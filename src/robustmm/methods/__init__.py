"""The missing-modality methods and plug-ins, one file each; importing this package registers them."""

from .baseline import DropoutConfig, ModalityDropout, PlaceholderConfig, PlaceholderFusion
from .cmpt import CMPT, CMPTConfig
from .map import MAPConfig, MissingAwarePrompts
from .molt import MoLT, MoLTConfig
from .mwam import MWAM, MWAMConfig
from .rep import REPConfig, ReplayPrompting

__all__ = [
    "CMPT",
    "CMPTConfig",
    "DropoutConfig",
    "MAPConfig",
    "MWAM",
    "MWAMConfig",
    "MissingAwarePrompts",
    "ModalityDropout",
    "MoLT",
    "MoLTConfig",
    "PlaceholderConfig",
    "PlaceholderFusion",
    "REPConfig",
    "ReplayPrompting",
]
