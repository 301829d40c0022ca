"""`baseline` and `dropout`: sum of CLS tokens, with the standard placeholder for a missing modality.

These are the paper's reference points (Fig. 3): `baseline` trains on what the data holds; `dropout` is the same
model trained with random modality dropout, where a dropped modality is replaced by its placeholder exactly as a
missing one is at test time. The placeholder is the same for every sample, so its encoding is computed once per
step and shared, and the encoder runs only on the samples whose modality is used.

Which placeholder is itself a choice the sources make differently: the paper says a missing image is "zeros",
MAP's code feeds all-ones pixel values after normalization, and a black image (normalized like any other) is the
natural input. `placeholder` and `audio_placeholder` choose; a missing text is always the empty string.

Fusion: generic. The placeholder's feature stands in for a missing modality, and `fusion` (default `sum`, the
paper's) fuses every modality's feature, the stand-ins included.

Optimisation: as CMPT's (Table 6), the adapters and the head at the run's learning rate (1e-3 in the shipped
configs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..model import Features, ModalityDropoutChoice, ModelConfig, MultimodalModel
from ..registry import register_method


@dataclass
class PlaceholderConfig(ModelConfig):
    """The raw placeholder (a black image or frames, one second of silence), or the model input filled with 0 or 1
    after normalization."""

    placeholder: Literal["black", "zeros", "ones"] = "black"
    """Image and video frames in place of a missing one: `black` (default: a black image, normalized as any image
    is), `zeros` (pixel values 0 after normalization, the paper's wording) or `ones` (1, MAP's code)."""
    audio_placeholder: Literal["silence", "zeros", "ones"] = "silence"
    """Audio in place of a missing clip: `silence` (default: one second, through the feature extractor),
    `zeros` or `ones` (the normalized spectrogram filled with 0 or 1)."""


@register_method("baseline")
class PlaceholderFusion(MultimodalModel):
    """Fused feature = sum over modalities of the CLS feature of the input, or of the placeholder if missing."""

    config_class = PlaceholderConfig
    departures = ("a missing image is a black image, normalised like any other (placeholder=zeros: the paper's)",)

    def placeholder_inputs(self, modality: str) -> dict[str, torch.Tensor]:
        inputs = super().placeholder_inputs(modality)
        kind = self.encoders[modality].kind
        choice = self.config.audio_placeholder if kind == "audio" else self.config.placeholder
        if kind == "text" or choice not in ("zeros", "ones"):
            return inputs
        key = "input_values" if kind == "audio" else "pixel_values"
        return {**inputs, key: torch.full_like(inputs[key], 1.0 if choice == "ones" else 0.0)}

    def fuse(self, features: Features, visible) -> torch.Tensor:
        """The fusion of every modality's feature, the placeholder's where a modality is not visible."""
        device = self.device
        filled = {}
        for modality in self.modalities:
            rows = visible[modality].unsqueeze(-1)
            cls = features.cls[modality]
            if not rows.all():
                cls = torch.where(rows, cls, self.encode_placeholder(modality, device))
            filled[modality] = cls
        return self.fusion(filled, self.every_modality(visible))


@dataclass
class DropoutConfig(PlaceholderConfig):
    modality_dropout: ModalityDropoutChoice = "leave_one_out"


@register_method("dropout")
class ModalityDropout(PlaceholderFusion):
    """The baseline trained with random modality dropout (the paper's `leave_one_out` by default)."""

    config_class = DropoutConfig
