"""`gated_mean`: a learned gate per modality weighs the visible modalities' features, and their weighted mean is
the fused feature."""

from dataclasses import dataclass

import torch
import torch.nn as nn

import robustmm
from robustmm.fusions.base import Fusion, FusionConfig, one_width


@dataclass
class GatedMeanConfig(FusionConfig):
    gate_init: float = 1.0
    """Initial gate of every modality."""


@robustmm.register_fusion("gated_mean")
class GatedMean(Fusion):
    """Mean of the visible modalities' features, each weighted by a learned gate."""

    config_class = GatedMeanConfig

    def __init__(self, in_features, config):  # in_features: modality -> width
        super().__init__(in_features, config)
        self.gates = nn.ParameterDict({m: nn.Parameter(torch.tensor(config.gate_init)) for m in in_features})

    @property
    def out_features(self):  # the head's input width
        return one_width(self.in_features, "a gated mean")

    def forward(self, features, visible):  # modality -> [B, d] and -> [B] bools
        weights = torch.stack([self.gates[m].abs() * visible[m] for m in features]).unsqueeze(-1)
        return (weights * torch.stack(list(features.values()))).sum(0) / weights.sum(0).clamp(min=1e-6)
