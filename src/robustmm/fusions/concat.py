"""`concat`: the modalities' features side by side, REP's fusion."""

from __future__ import annotations

import torch

from ..registry import register_fusion
from .base import Fusion


@register_fusion("concat")
class ConcatFusion(Fusion):
    """`[f_1; ...; f_M]` in the modalities' order (REP's); encoders may differ in width."""

    @property
    def out_features(self) -> int:
        return sum(self.in_features.values())

    def forward(self, features, visible):
        return torch.cat(list(features.values()), dim=-1)
