"""Learned missing token: a learned vector per modality stands in for its class feature when the modality is
missing; the features are concatenated, and a norm penalty on the vectors is the auxiliary loss."""

from dataclasses import dataclass

import torch
import torch.nn as nn

import robustmm
from robustmm.model import ModelConfig, MultimodalModel


@dataclass
class LateTokenConfig(ModelConfig):
    norm_weight: float = 0.01
    """Weight of the missing tokens' squared norm in the loss."""


@robustmm.register_method("late_token")
class LateToken(MultimodalModel):
    """Concatenated class features; a learned token per modality where it is missing."""

    config_class = LateTokenConfig

    def build(self):  # runs under the config's seed, after the encoders, before the head
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(d)) for m, d in self.hidden_sizes.items()})

    def fused_size(self):  # the head's input width
        return sum(self.hidden_sizes.values())

    def fuse(self, features, visible):  # features.cls: modality -> [B, d]; visible: modality -> [B] bools
        return torch.cat([torch.where(visible[m][:, None], features.cls[m], self.missing[m])
                          for m in self.modalities], dim=-1)

    def auxiliary_losses(self, features, availability, batch):  # name -> (loss, weight); logged as train/<name>_loss
        norm = sum(token.pow(2).sum() for token in self.missing.values())
        return {"token_norm": (norm, self.config.norm_weight)}
