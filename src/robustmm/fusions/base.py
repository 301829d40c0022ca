"""The fusion contract: a module over named modality features, with its own options and output width."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checks import check_field_types


@dataclass
class FusionConfig:
    """Options every fusion shares; a fusion's own config subclasses this (keyword options `fusion_<name>`)."""

    norm: Literal["none", "layernorm"] = "none"
    """`none` (the paper's plain sum) or `layernorm`: each encoder's class and proxy outputs are normalized to zero
    mean and unit variance over the features (no learned scale) before fusion and the alignment loss. Use it when
    the encoders' features differ in scale (e.g. an encoder that ends without a LayerNorm next to one that ends
    with it): additive fusion otherwise hears the larger one louder. Real ViT-B and BERT-base both end in
    LayerNorm, the situation of the paper."""

    def __post_init__(self):
        check_field_types(self, "fusion_")


class Fusion(nn.Module):
    """Fuses modality -> [B, d_m] features into [B, out_features].

    `visible` (modality -> [B] bools) says which modalities' features the fusion may use in each row. A method
    that puts a stand-in where a modality is missing (the baseline's placeholder, CMPT's proxies) shows the
    fusion every modality; one that does not leaves the missing rows zero and not visible. `sum` and `concat` read
    every row; `gated_mean` and `transformer` leave out what is not visible.
    """

    fusion: str = ""
    config_class: type = FusionConfig

    def __init__(self, in_features: dict[str, int], config: FusionConfig):
        super().__init__()
        self.in_features = dict(in_features)
        self.config = config

    @property
    def out_features(self) -> int:
        """Width of the fused feature: the head's input."""
        raise NotImplementedError

    def normalize(self, features: torch.Tensor) -> torch.Tensor:
        """An encoder output as this fusion reads it (`norm`); the model applies it where it encodes."""
        if self.config.norm == "layernorm":
            return F.layer_norm(features, features.shape[-1:])
        return features

    def forward(self, features: dict[str, torch.Tensor], visible: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


def one_width(in_features: dict[str, int], what: str) -> int:
    """The one width of fusions that add features up; a clear error for encoders of different widths."""
    if len(set(in_features.values())) != 1:
        raise ValueError(
            f"{what} needs encoders of one hidden size, got {in_features}; choose encoders that match, or a fusion "
            "that concatenates (fusion=concat)"
        )
    return next(iter(in_features.values()))
