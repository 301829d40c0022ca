"""`baseline` and `dropout`: sum of CLS tokens, with the standard placeholder for a missing modality.

These are the paper's reference points (Fig. 3): `baseline` trains on what the data holds; `dropout` is the same
model trained with random modality dropout, where a dropped modality is replaced by its placeholder exactly as a
missing one is at test time. The placeholder is the same for every sample, so its encoding is computed once per
step and shared, and the encoder runs only on the samples whose modality is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import ModelConfig, MultimodalModel
from ..processing import Batch
from ..registry import register_method


@register_method("baseline")
class PlaceholderFusion(MultimodalModel):
    """Fused feature = sum over modalities of the CLS feature of the input, or of the placeholder if missing."""

    def encode(self, batch: Batch, visible: dict[str, torch.Tensor]):
        cls = {}
        for modality in self.modalities:
            encoded = self.encode_present(batch, modality, visible[modality])
            if encoded is None:
                cls[modality] = self.head.weight.new_zeros(len(batch), self.hidden_size)
            else:
                cls[modality] = encoded[0]
        return cls, {}

    def fuse(self, cls, proxies, visible) -> torch.Tensor:
        device = self.head.weight.device
        fused = 0
        for modality in self.modalities:
            shown = visible[modality].unsqueeze(-1)
            features = cls[modality]
            if not shown.all():
                features = torch.where(shown, features, self.encode_placeholder(modality, device))
            fused = fused + features
        return fused


@dataclass
class DropoutConfig(ModelConfig):
    modality_dropout: str = "leave_one_out"


@register_method("dropout")
class ModalityDropout(PlaceholderFusion):
    """The baseline trained with random modality dropout (the paper's `leave_one_out` by default)."""

    config_class = DropoutConfig
