"""CMPT: Cross-Modal Proxy Tokens (Reza et al., "Robust Multimodal Learning via Cross-Modal Proxy Tokens").

Each encoder f_m carries one learnable proxy token per other modality n, inserted beside its class token
(eq. 2: `[P_m, CLS_m, T_m]`). After the adapted encoder (eq. 3), the proxy output P^_{m->n} is trained to
approximate the class output C^_n of modality n (eq. 4), and stands in for it when n is missing (eq. 5):

    fused = sum over n of  C^_n                              if n is available,
                           mean of P^_{m->n} over available m  if n is missing.

With two modalities this is exactly eq. 5: m1 missing gives `C^_m2 + P^_m2`. The gating is CMPT's own; the sum over
n is the `fusion` option (default `sum`, eq. 5's), which fuses the filled terms, every modality shown. A missing
modality's encoder has no influence on the prediction, so it is not run for the samples that lack it. Loss (eq. 7):
`L_task + lambda * L_align`, lambda = 0.2.

Optimisation (Table 6): AdamW, lr 1e-3, rank-1 LoRA on every encoder; the proxies, the adapters and the head all
train at the run's rate (`module_lr_scale` 1), the shipped configs' 1e-3.

Choices where the paper is silent, each an option:
- `align_denominator`: `paper` divides the summed cross-modal errors by MSE(P^_m1, C^_m1), the first modality's
  proxy against its own class output, as eq. 4 is written (asymmetric); with N > 2 modalities, m1 and m2 are the
  first two present in the configured order. `symmetric` divides each pair's error MSE(P^_{m->n}, C^_n) by
  MSE(P^_{m->n}, C^_m); `none` keeps the numerator only. `align_eps` guards every denominator.
  Why `paper` can collapse. Write P1 = P^_{m1->m2}, P2 = P^_{m2->m1}, N = MSE(P1, C^_m2) + MSE(P2, C^_m1),
  D = MSE(P1, C^_m1) and L = N / D. Then
      dL/dX  = (dN/dX) / D                      for every X but P1 (C^_m1 and C^_m2 included: not detached),
      dL/dP1 = (dN/dP1) / D - (L / D) dD/dP1    (the second term pushes P1 AWAY from its own C^_m1).
  The alignment is weighted by 1/D, and D scales with the features: where the class outputs are small, as real
  encoders that end in a LayerNorm make them (the paper's situation), D starts small, lambda * L outweighs the
  task loss several times over, and its gradient drags the class outputs themselves towards the proxies, so
  they lose what tells samples apart. Meanwhile the loss also falls by growing D, which the second term does.
  Where C^_m1 is much larger than the proxies (an encoder five times louder than the other), D stays near
  |C^_m1|^2 / d, about constant, and `paper` acts as `none` scaled. Measured on the demo
  (`scripts/eq4_denominator_curve.py`): lambda * L starts at 4x the task loss (`none`: 0.06x), D grows 7x, and
  the spread of the image's class output falls by an eighth; accuracy with the image missing falls from 0.66 to
  0.41 (BENCHMARKS.md). The default is therefore `none`; the shipped configs of the paper's experiments keep
  `paper`.
- `align_detach_target`: whether the class outputs used as targets are detached (in numerator and
  denominator). The paper's formula reads as no detach, the default.
- Modality dropout on complete training data: `leave_one_out`, one draw per step (`batch`), as the paper's
  "use both, or drop one, in each iteration". A dropped modality is replaced by its proxies in the fusion, but its
  encoder still runs so that the alignment loss sees the truly present data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from ..model import Features, ModalityDropoutChoice, ModelConfig, MultimodalModel
from ..processing import Batch
from ..registry import register_method


@dataclass
class CMPTConfig(ModelConfig):
    modality_dropout: ModalityDropoutChoice = "leave_one_out"
    align_weight: float = 0.2
    """lambda of eq. 7: the alignment loss's weight."""
    align_denominator: Literal["none", "paper", "symmetric"] = "none"
    """`none` (the default, chosen on the demo's evidence: BENCHMARKS.md), `paper` (eq. 4 as written: the shipped
    configs of the paper's experiments use it) or `symmetric`; see the module docstring."""
    align_detach_target: bool = False
    """Detach the class outputs that the proxies are aligned to (numerator and denominator); the paper's formula
    reads as no detach."""
    align_eps: float = 1e-6
    """Guards every denominator of the alignment loss."""

    def __post_init__(self):
        super().__post_init__()
        if len(self.encoders) < 2:
            raise ValueError("CMPT needs at least two modalities")
        if self.align_weight < 0 or self.align_eps <= 0:
            raise ValueError(f"align_weight must be >= 0 and align_eps > 0, got {self.align_weight}, {self.align_eps}")


def mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over features: [B, d] x [B, d] -> [B]."""
    return (a - b).pow(2).mean(-1)


def proxy_fill(cls, proxies, visible, modalities) -> dict[str, torch.Tensor]:
    """Gating (eq. 5, N modalities): each modality's term is its class output when available, otherwise the mean
    of the proxies that the available modalities hold for it."""
    terms = {}
    for target in modalities:
        sources = [m for m in modalities if m != target]
        weights = torch.stack([visible[m] for m in sources]).to(cls[target].dtype)  # [S, B]
        stacked = torch.stack([proxies[m, target] for m in sources])  # [S, B, d]
        proxy_mean = (weights.unsqueeze(-1) * stacked).sum(0) / weights.sum(0).clamp(min=1).unsqueeze(-1)
        terms[target] = torch.where(visible[target].unsqueeze(-1), cls[target], proxy_mean)
    return terms


def alignment_loss(cls, proxies, present, modalities, denominator="paper", detach_target=False, eps=1e-6):
    """Eq. 4, averaged over the samples in which at least two modalities are truly present.

    For two modalities and `denominator="paper"`:
    `mean_x [MSE(P^_m1, C^_m2) + MSE(P^_m2, C^_m1)] / MSE(P^_m1, C^_m1)`.
    """
    target = {m: c.detach() if detach_target else c for m, c in cls.items()}
    numerator = 0
    first_pair_error = None  # MSE(P^_{m1->m2}, C^_m1) for the first two present modalities of each sample
    for source in modalities:
        for goal in modalities:
            if source == goal:
                continue
            both = present[source] & present[goal]
            error = mse(proxies[source, goal], target[goal])
            self_error = mse(proxies[source, goal], target[source])
            if denominator == "symmetric":
                error = error / (self_error + eps)
            numerator = numerator + torch.where(both, error, torch.zeros_like(error))
            if denominator == "paper" and modalities.index(source) < modalities.index(goal):
                if first_pair_error is None:
                    first_pair_error = torch.where(both, self_error, torch.full_like(self_error, float("nan")))
                else:
                    unset = torch.isnan(first_pair_error) & both
                    first_pair_error = torch.where(unset, self_error, first_pair_error)
    complete = torch.stack([present[m] for m in modalities]).sum(0) >= 2
    if not complete.any():
        return next(iter(cls.values())).new_zeros(())
    per_sample = numerator[complete]
    if denominator == "paper":
        per_sample = per_sample / (first_pair_error[complete] + eps)
    return per_sample.mean()


@register_method("cmpt")
class CMPT(MultimodalModel):
    """Cross-modal proxy tokens: a missing modality's class token is approximated from the available ones."""

    config_class = CMPTConfig
    departures = ("eq. 4's denominator left out (align_denominator=paper: as written; the shipped paper configs)",)

    def build(self) -> None:
        """One proxy token per other modality in front of each encoder's CLS (eq. 2), N(0, 0.02^2)."""
        if len(set(self.hidden_sizes.values())) != 1:  # proxies stand for other modalities' class outputs
            raise ValueError(f"additive fusion needs encoders of one hidden size, got {self.hidden_sizes}: CMPT's "
                             "proxies stand in for the other modalities' class outputs; choose encoders that match")
        self.proxies = nn.ParameterDict(
            {
                m: nn.Parameter(torch.randn(len(self.proxy_targets(m)), self.hidden_sizes[m]) * 0.02)
                for m in self.modalities
            }
        )
        for m, encoder in self.encoders.items():
            tokens = self.proxies[m]
            encoder.add_prefix("proxies", len(tokens), lambda context, t=tokens: t.expand(len(context), -1, -1))

    def proxy_targets(self, modality: str) -> list[str]:
        """The modalities whose class outputs the proxies of `modality` stand for, in token order."""
        return [m for m in self.modalities if m != modality]

    def encode(self, batch: Batch, visible: dict[str, torch.Tensor]) -> Features:
        """Encode each modality for the samples that truly have it (dropped ones too: the alignment needs them)."""
        cls, proxies = {}, {}
        for modality in self.modalities:
            encoded = self.encode_present(batch, modality, batch.present[modality])
            targets = self.proxy_targets(modality)
            d = self.hidden_sizes[modality]
            cls[modality] = encoded.cls if encoded else self.zeros(len(batch), d)
            tokens = encoded.prefix["proxies"] if encoded else self.zeros(len(batch), len(targets), d)
            for index, target in enumerate(targets):
                proxies[modality, target] = tokens[:, index]
        return Features(cls, {"proxies": proxies})

    def fuse(self, features: Features, visible) -> torch.Tensor:
        terms = proxy_fill(features.cls, features.extras["proxies"], visible, self.modalities)
        return self.fusion(terms, self.every_modality(visible))

    def auxiliary_losses(self, features: Features, availability, batch) -> dict[str, tuple[torch.Tensor, float]]:
        """Eq. 4 over what the samples have (`present`): a modality dropped in training is still a target."""
        c = self.config
        loss = alignment_loss(
            features.cls, features.extras["proxies"], availability.present, self.modalities,
            c.align_denominator, c.align_detach_target, c.align_eps,
        )
        return {"align": (loss, c.align_weight)}

    @classmethod
    def upgrade_state_dict(cls, state, version):
        """Format 1 kept the proxies in the encoders (`encoders.<m>.proxy_tokens`)."""
        if version >= 2:
            return state
        return {
            f"proxies.{name.split('.')[1]}" if name.endswith(".proxy_tokens") else name: tensor
            for name, tensor in state.items()
        }
