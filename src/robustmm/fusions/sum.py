"""`sum`: the modalities' features added up, CMPT's eq. 5 and the baseline's fusion."""

from __future__ import annotations

from ..registry import register_fusion
from .base import Fusion, one_width


@register_fusion("sum")
class SumFusion(Fusion):
    """Sum of the modalities' features (CMPT's eq. 5, the baseline's), stand-ins and zero rows included."""

    @property
    def out_features(self) -> int:
        return one_width(self.in_features, "additive fusion")

    def forward(self, features, visible):
        return sum(features.values())
