"""Fusions: how the modalities' features become the one feature the head reads, one file each.

A method that fuses generically builds the fusion its config names (`ModelConfig.fusion`: `sum`, `concat`,
`gated_mean`, `transformer`, or one registered with `robustmm.register_fusion`) and gives it each modality's
feature with which of them it may use (`visible`); the head is sized from the fusion's `out_features`.
"""

from .base import Fusion, FusionConfig
from .concat import ConcatFusion
from .gated_mean import GatedMean, GatedMeanConfig
from .sum import SumFusion
from .transformer import TransformerFusion, TransformerFusionConfig

__all__ = [
    "ConcatFusion",
    "Fusion",
    "FusionConfig",
    "GatedMean",
    "GatedMeanConfig",
    "SumFusion",
    "TransformerFusion",
    "TransformerFusionConfig",
]
