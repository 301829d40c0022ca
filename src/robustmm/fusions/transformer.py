"""`transformer`: MoLT's fusion, a Transformer encoder over a learned [FUS] token and the modalities' features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..registry import register_fusion
from .base import Fusion, FusionConfig


@dataclass
class TransformerFusionConfig(FusionConfig):
    layers: int = 2
    """Post-norm Transformer encoder layers (MoLT's reconstruction: 2)."""
    heads: int = 4
    """Attention heads of each layer; they divide the fusion's width."""
    dropout: float = 0.1
    """Dropout of each layer."""

    def __post_init__(self):
        super().__post_init__()
        if self.layers < 1 or self.heads < 1:
            raise ValueError(f"fusion_layers and fusion_heads must be at least 1, got {self.layers}, {self.heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"fusion_dropout must be in [0, 1), got {self.dropout}")


@register_fusion("transformer")
class TransformerFusion(Fusion):
    """MoLT's fusion: a Transformer over [FUS], tokens a method adds and the visible modalities' features.

    The tokens a method adds are MoLT's robust features; each modality's feature is projected to the fusion's
    width; the output at [FUS] is the fused feature.
    Learned token-type embeddings (one per slot: [FUS], each added token, each modality) tell the tokens apart,
    which attention alone cannot; a modality that is not visible is masked out. `width` is the fusion's width
    (MoLT: its latent size d_c; by default the widest encoder's), feed-forward 4 x width.
    """

    config_class = TransformerFusionConfig

    def __init__(self, in_features: dict[str, int], config: TransformerFusionConfig, width: int | None = None,
                 extra_tokens: int = 0):
        super().__init__(in_features, config)
        self.width = width or max(in_features.values())
        if self.width % config.heads:
            raise ValueError(f"fusion_heads={config.heads} does not divide the fusion's width {self.width}")
        self.fus_token = nn.Parameter(torch.randn(self.width) * 0.02)
        self.token_types = nn.Parameter(torch.randn(1 + extra_tokens + len(in_features), self.width) * 0.02)
        self.cls_projections = nn.ModuleDict({m: nn.Linear(d, self.width) for m, d in in_features.items()})
        layer = nn.TransformerEncoderLayer(self.width, config.heads, 4 * self.width, config.dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)

    @property
    def out_features(self) -> int:
        return self.width

    def forward(self, features, visible, extra_tokens: Sequence[torch.Tensor] = ()):
        """`extra_tokens`: [B, width] each, always attended to, after [FUS] and before the modalities."""
        size = next(iter(features.values())).shape[0]
        embeddings = [self.cls_projections[m](c) for m, c in features.items()]
        tokens = torch.stack([self.fus_token.expand(size, -1), *extra_tokens, *embeddings], 1)
        shown = torch.stack([visible[m] for m in features], 1)
        ignored = torch.cat([shown.new_zeros(size, 1 + len(extra_tokens)), ~shown], 1)
        return self.encoder(tokens + self.token_types, src_key_padding_mask=ignored)[:, 0]
