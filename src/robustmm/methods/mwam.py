"""MWAM: the frequency ratio metric and modality weight allocation, a plug-in on any method.

Source: "Plug, Play, and Fortify" (arXiv 2602.22644, ICLR 2026), and its code (MMANet integration). A modality
whose input carries much low-frequency energy relative to its high frequencies dominates training and leaves
the others under-trained; MWAM measures that per modality and per batch and turns the balance towards the
weaker ones. It changes training only: at inference it is detached and adds nothing.

Equations, for each modality m of a training batch:
- patch DCT: the input x_m is cut into p x p patches (p = 8) and each patch and channel gets an orthonormal 2-D
  DCT. The low band is its top-left q x q block, the high band its bottom-right q x q block flipped in both axes
  (q = 2).
- FRM (eq. 4): `FRM(x_m) = sum_{a,b} | I_low(a, b) / (I_high(q-1-a, q-1-b) + sigma) |` over patches, channels and
  band positions, sigma = 1e-6.
- bank (eq. 2): `F^_0 = F_0`, `F^_j = omega F^_{j-1} + (1 - omega) F_j`, omega = 0.5.
- ratio (eq. 6): `T_m = FRM(x_m) / (mean_c F^_c + sigma)`.
- weight (eq. 5): `K_m = alpha - beta / (1 + exp(-lambda (T_m - gamma)))`, in (alpha - beta, alpha) = (0.5, 1.5):
  the dominant modality (high FRM) gets the lower weight. alpha, beta, lambda, gamma = 1.5, 1, 6, 0.7 (paper).
- intervention (`mode`): `gradient` multiplies the gradients of modality m's own trainable parameters by K_m
  after the backward pass (its encoder's adapters, and the method's parameters kept under the modality's name,
  `MultimodalModel.modality_parameters`); `loss` adds `sum_m K_m L_aux,m` with one auxiliary linear head per
  modality on its class feature (eq. 7); `hybrid` does both, the paper's best (Table 5).

Choices where the source is silent (the paper applies FRM to image-like inputs only), each an option:
- How FRM reads each kind. Image: the processed pixel values. Video: every frame's pixel values. Text: the
  encoder's token-embedding matrix of the sample (tokens x width) read as a one-channel image, padding zeroed.
  Audio: the processed spectrogram (frames x bins) as a one-channel image. Sides that are not a multiple of p
  are zero-padded; a zero patch contributes 0.
- FRM is averaged over the samples that show the modality (the paper sums over the batch, which would make
  it depend on how many samples lack the modality). A batch in which no sample shows m leaves its bank as it is
  and its FRM is the bank's value ("the bank supplies the value").
- `scale`: text, audio and images differ in FRM by orders of magnitude for reasons unrelated to dominance, so
  each modality's FRM is divided by its mean over the first `scale_steps` training batches (`first_steps`, the
  default; a port of "normalise by its first-epoch mean"); `none` compares raw FRMs, as the paper does with
  modalities that are all images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..checks import check_field_types
from ..model import Features, Plugin
from ..registry import PLUGINS

MODES = ("gradient", "loss", "hybrid")
SCALES = ("first_steps", "none")


@dataclass
class MWAMConfig:
    mode: str = "hybrid"
    """`gradient`, `loss` or `hybrid` (both; the paper's best)."""
    alpha: float = 1.5
    beta: float = 1.0
    steepness: float = 6.0
    """lambda of eq. 5."""
    center: float = 0.7
    """gamma of eq. 5."""
    momentum: float = 0.5
    """omega of the FRM bank (eq. 2)."""
    patch: int = 8
    band: int = 2
    sigma: float = 1e-6
    scale: str = "first_steps"
    scale_steps: int = 50

    def __post_init__(self):
        check_field_types(self, "mwam_")
        if self.mode not in MODES:
            raise ValueError(f"mwam mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.scale not in SCALES:
            raise ValueError(f"mwam scale must be one of {', '.join(SCALES)}, got {self.scale!r}")
        if not 0 < self.band <= self.patch // 2:
            raise ValueError(f"mwam band must be in 1..patch/2 ({self.patch // 2}), got {self.band}")
        if not 0 <= self.momentum < 1 or self.beta <= 0 or self.scale_steps < 1:
            raise ValueError("mwam needs 0 <= momentum < 1, beta > 0 and scale_steps >= 1")


def dct_matrix(size: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix: `D @ x` is the 1-D DCT of x (scipy's `dct(x, norm="ortho")`)."""
    n = torch.arange(size, dtype=torch.float64)
    matrix = torch.cos(math.pi * (2 * n[None, :] + 1) * n[:, None] / (2 * size)) * math.sqrt(2 / size)
    matrix[0] /= math.sqrt(2)
    return matrix


def patch_dct(images: torch.Tensor, patch: int) -> torch.Tensor:
    """[n, C, H, W] -> [n, C, H/p, W/p, p, p]: the orthonormal 2-D DCT of each p x p patch (sides zero-padded)."""
    n, c, h, w = images.shape
    images = nn.functional.pad(images, (0, -w % patch, 0, -h % patch))
    blocks = images.unfold(2, patch, patch).unfold(3, patch, patch)
    d = dct_matrix(patch).to(images.dtype).to(images.device)
    return d @ blocks @ d.T


def frequency_ratio(images: torch.Tensor, patch: int = 8, band: int = 2, sigma: float = 1e-6) -> torch.Tensor:
    """FRM of eq. 4 per sample: [n, C, H, W] -> [n], summed over patches, channels and band positions."""
    coefficients = patch_dct(images.float(), patch)
    low = coefficients[..., :band, :band]
    high = coefficients[..., -band:, -band:].flip(-1, -2)
    return (low / (high + sigma)).abs().flatten(1).sum(1)


def modality_weight(ratio: torch.Tensor, alpha=1.5, beta=1.0, steepness=6.0, center=0.7) -> torch.Tensor:
    """K of eq. 5: from alpha (a weak modality) down to alpha - beta (a dominant one)."""
    return alpha - beta / (1 + torch.exp(-steepness * (ratio - center)))


@PLUGINS.register("mwam")
class MWAM(Plugin):
    """Frequency-ratio modality weighting during training (gradient editing and/or weighted auxiliary heads)."""

    config_class = MWAMConfig

    def __init__(self, model, config: MWAMConfig):
        super().__init__(model, config)
        self.modalities = list(model.modalities)
        self.kinds = {m: e.kind for m, e in model.encoders.items()}
        self.embeddings = {m: e.backbone.get_base_model().get_input_embeddings() for m, e in model.encoders.items()}
        size = len(self.modalities)
        self.register_buffer("bank", torch.zeros(size))
        self.register_buffer("banked", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("scale_sum", torch.zeros(size))
        self.register_buffer("scale_count", torch.zeros(size))
        self.register_buffer("weights", torch.ones(size))
        """K of the latest training batch; 1 until the first."""
        self.aux_heads = None
        if config.mode in ("loss", "hybrid"):
            self.aux_heads = nn.ModuleDict(
                {m: nn.Linear(model.hidden_sizes[m], model.config.num_classes) for m in self.modalities}
            )

    def input_map(self, batch, modality: str, rows: torch.Tensor) -> torch.Tensor:
        """The modality's input of the samples `rows` (a mask over those that have it) as [n, C, H, W]."""
        inputs = {k: v[rows] for k, v in batch.inputs[modality].items()}
        kind = self.kinds[modality]
        if kind == "image":
            return inputs["pixel_values"]
        if kind == "video":
            return inputs["pixel_values"].flatten(0, 1)
        if kind == "audio":
            return inputs["input_values"].unsqueeze(1)
        embedded = self.embeddings[modality](inputs["input_ids"])
        return (embedded * inputs["attention_mask"].unsqueeze(-1).to(embedded.dtype)).unsqueeze(1)

    @torch.no_grad()
    def update(self, batch, visible) -> None:
        """FRM of this batch, the bank (eq. 2), the ratio (eq. 6) and K (eq. 5) of every modality."""
        c = self.config
        current = self.bank.clone()
        for index, m in enumerate(self.modalities):
            rows = visible[m][batch.present[m]]
            if not rows.any():
                continue
            frm = frequency_ratio(self.input_map(batch, m, rows), c.patch, c.band, c.sigma).mean()
            if c.scale == "first_steps":
                if self.scale_count[index] < c.scale_steps:
                    self.scale_sum[index] += frm
                    self.scale_count[index] += 1
                frm = frm / (self.scale_sum[index] / self.scale_count[index] + c.sigma)
            current[index] = frm
            banked = self.banked[index]
            self.bank[index] = c.momentum * self.bank[index] + (1 - c.momentum) * frm if banked else frm
            self.banked[index] = True
        ratio = current / (self.bank.mean() + c.sigma)
        self.weights.copy_(modality_weight(ratio, c.alpha, c.beta, c.steepness, c.center))

    def auxiliary_losses(self, features: Features, visible, batch) -> dict[str, tuple[torch.Tensor, float]]:
        model = self.owner
        if not model.training:
            return {}
        self.update(batch, visible)
        if self.aux_heads is None:
            return {}
        losses = {}
        for index, m in enumerate(self.modalities):
            rows = visible[m]
            if rows.any():
                logits = self.aux_heads[m](features.cls[m][rows])
                losses[f"mwam_{m}"] = (model.task_loss(logits, batch.labels[rows]), float(self.weights[index]))
        return losses

    def on_after_backward(self) -> None:
        if self.config.mode == "loss":
            return
        for index, m in enumerate(self.modalities):
            for parameter in self.owner.modality_parameters(m):
                if parameter.grad is not None:
                    parameter.grad.mul_(self.weights[index].to(parameter.grad.dtype))
