"""MWAM: the frequency ratio metric and modality weight allocation, a plug-in on any method.

Source: "Plug, Play, and Fortify" (arXiv 2602.22644, ICLR 2026), and its code (MMANet integration). A modality
whose input carries much low-frequency energy relative to its high frequencies dominates training and leaves
the others under-trained; MWAM measures that per modality and turns the balance towards the weaker ones. It
changes training only: at inference it is detached and adds nothing.

Equations, for each modality m:
- patch DCT: the input x_m is cut into p x p patches (p = 8) and each patch and channel gets an orthonormal 2-D
  DCT. The low band is its top-left q x q block, the high band its bottom-right q x q block flipped in both axes
  (q = 2).
- FRM (eq. 4): `FRM(x_m) = sum_{a,b} | I_low(a, b) / (I_high(q-1-a, q-1-b) + sigma) |` over patches, channels and
  band positions, sigma = 1e-6.
- bank (eq. 2): `F^_0 = F_0`, `F^_j = omega F^_{j-1} + (1 - omega) F_j`, omega = 0.5.
- ratio (eq. 6): `T_m = FRM(x_m) / (mean_c F^_c + sigma)`.
- weight (eq. 5): `K_m = alpha - beta / (1 + exp(-lambda (T_m - gamma)))`, in (alpha - beta, alpha) = (0.5, 1.5):
  the dominant modality (high FRM) gets the lower weight. alpha, beta, lambda, gamma = 1.5, 1, 6, 0.7 (paper).
- intervention (`mode`): `gradient` scales modality m's own trainable parameters' update by K_m (its encoder's
  adapters, and the method's parameters kept under the modality's name, `MultimodalModel.modality_parameters`);
  `loss` adds `sum_m K_m L_aux,m` with one auxiliary linear head per modality on its class feature (eq. 7);
  `hybrid` does both, the paper's best (Table 5).

When K is decided and how it acts, where the paper's host (SGD, momentum 0.9, one GPU) leaves it open:
- Once per optimizer step: every micro-batch of the step (`accumulate_grad_batches`) adds its FRM to the step's
  statistics, and before the optimizer steps they are summed over the DDP ranks, so that every rank computes the
  same bank and the same K. The auxiliary losses of a step are weighted by the K of the step before (1 at the
  first), the latest K there is when they are computed.
- `apply`: `lr` (default) multiplies the learning rate of the optimizer's parameter groups of modality m by K_m
  for that step. That is what the paper's `grad <- K grad` does under SGD, and unlike a gradient scale it survives
  Adam, which divides a constant gradient scale out. `gradient` multiplies the step's accumulated gradients, the
  paper's edit as written (`TrainConfig.optimizer="sgd"` with `momentum` 0.9 is the paper's host optimizer).
- Logged per optimizer step: `train/mwam_k_<modality>` and `train/mwam_ratio_<modality>` (T_m).
- Learning rate: the auxiliary heads train at the run's learning rate. The paper's host (MMANet on CASIA-SURF)
  trains with SGD, lr 1e-3, momentum 0.9, weight decay 5e-4, batches of 64, 100 epochs: `--set
  train.optimizer=sgd` and those values (the plug-in has no config of its own to ship them in).

Choices where the source is silent (the paper applies FRM to image-like inputs only), each an option:
- How FRM reads each kind. Image: the processed pixel values. Video: every frame's pixel values. Text: the
  encoder's token-embedding matrix of the sample (tokens x width) read as a one-channel image, padding zeroed.
  Audio: the processed spectrogram (frames x bins) as a one-channel image. Sides that are not a multiple of p
  are zero-padded; a zero patch contributes 0.
- Modalities that compare: eq. 4 sums over patches, so a longer text (more patches) has a larger FRM, and it
  divides by a high-band coefficient that is exactly 0 where a text repeats a token, giving FRMs of 1e5.
  `frm_reduce="mean"` (default) averages over the patches that carry any signal instead of summing (`sum`: eq. 4);
  `frm_floor` (0.1) adds to each denominator that fraction of the patch's RMS coefficient, which bounds every
  term (by 8 / 0.1 for p = 8) and makes FRM independent of the input's scale, so that pixels, embeddings and
  spectrograms compare as the paper compares images (0: eq. 4's sigma alone).
- FRM is averaged over the samples that show the modality (the paper sums over the batch, which would make
  it depend on how many samples lack the modality). A step in which no sample shows m leaves its bank as it is
  and its FRM is the bank's value ("the bank supplies the value"). A modality not yet seen has K = 1 and is left
  out of eq. 6's mean.
- `scale`: `none` (default) compares the FRMs as they are, as eq. 6 does. `first_steps` divides each modality's
  FRM by its own mean over the first `scale_steps` steps (the reference notes' "normalise by its first-epoch
  mean"): every modality then starts at 1, so K no longer compares modalities but follows each one's change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from ..checks import check_field_types
from ..model import Features, Plugin
from ..registry import PLUGINS



@dataclass
class MWAMConfig:
    mode: Literal["gradient", "loss", "hybrid"] = "hybrid"
    """`gradient`, `loss` or `hybrid` (both; the paper's best)."""
    apply: Literal["lr", "gradient"] = "lr"
    """How `gradient` mode's K acts: `lr`, a per-step scale of the modality's learning rate (survives Adam), or
    `gradient`, a scale of its accumulated gradients (the paper's edit; equal under plain SGD)."""
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
    frm_reduce: Literal["mean", "sum"] = "mean"
    """`mean` over the patches with any signal (bounded in the input's size), or `sum` (eq. 4)."""
    frm_floor: float = 0.1
    """Each FRM denominator plus this fraction of the patch's RMS coefficient (bounded, scale-free); 0: eq. 4."""
    scale: Literal["none", "first_steps"] = "none"
    scale_steps: int = 50

    def __post_init__(self):
        check_field_types(self, "mwam_")
        if self.frm_floor < 0:
            raise ValueError(f"mwam frm_floor must be >= 0, got {self.frm_floor}")
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


def frequency_ratio(
    images: torch.Tensor, patch: int = 8, band: int = 2, sigma: float = 1e-6, reduce: str = "sum", floor: float = 0.0
) -> torch.Tensor:
    """FRM per sample: [n, C, H, W] -> [n]. `reduce="sum"`, `floor=0`: eq. 4, summed over patches, channels and
    band positions. `reduce="mean"`: the per-patch sums averaged over the patches (and channels) that are not all
    zero. `floor`: each denominator is |I_high| + floor x the patch's RMS coefficient + sigma."""
    coefficients = patch_dct(images.double(), patch)  # eq. 4's near-zero denominators need the precision
    low = coefficients[..., :band, :band]
    high = coefficients[..., -band:, -band:].flip(-1, -2)
    if floor:
        rms = coefficients.pow(2).mean((-1, -2), keepdim=True).sqrt()
        terms = low.abs() / (high.abs() + floor * rms + sigma)
    else:
        terms = (low / (high + sigma)).abs()
    per_patch = terms.sum((-1, -2)).flatten(1)
    if reduce == "sum":
        return per_patch.sum(1).float()
    signal = (coefficients.abs().amax((-1, -2)) > 0).flatten(1)
    return (per_patch.sum(1) / signal.sum(1).clamp(min=1)).float()


def modality_weight(ratio: torch.Tensor, alpha=1.5, beta=1.0, steepness=6.0, center=0.7) -> torch.Tensor:
    """K of eq. 5: from alpha (a weak modality) down to alpha - beta (a dominant one)."""
    return alpha - beta / (1 + torch.exp(-steepness * (ratio - center)))


def reduce_across_ranks(statistics: torch.Tensor) -> torch.Tensor:
    """The sum of `statistics` over the DDP ranks (a copy of it without a process group)."""
    statistics = statistics.clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(statistics)
    return statistics


@PLUGINS.register("mwam")
class MWAM(Plugin):
    """Frequency-ratio modality weighting in training: a per-step scale of each modality's update, weighted heads."""

    config_class = MWAMConfig
    departures = (
        "K scales each modality's learning rate per step, which survives AdamW (apply=gradient: the paper's "
        "gradient scale; train.optimizer=sgd, train.momentum=0.9: its host's optimizer)",
        "FRM averaged over patches with a floor under its denominators, so that text, audio and images compare "
        "(frm_reduce=sum, frm_floor=0: eq. 4)",
        "FRM averaged over the samples that show the modality, not summed over the batch",
        "K once per optimizer step from the statistics of all micro-batches and ranks; the auxiliary losses "
        "weighted by the previous step's K",
    )

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
        """K of the latest optimizer step; 1 until the first."""
        self.register_buffer("ratios", torch.zeros(size))
        """T_m of the latest optimizer step."""
        self.register_buffer("pending", torch.zeros(2, size, dtype=torch.float64), persistent=False)
        """This step's FRM sums and sample counts per modality, over its micro-batches so far."""
        self._unscaled_lr: list[tuple[dict, float]] = []
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

    def frm(self, batch, modality: str, rows: torch.Tensor) -> torch.Tensor:
        """FRM of each sample in `rows` (a mask over those that have the modality): [n]."""
        c = self.config
        maps = self.input_map(batch, modality, rows)
        return frequency_ratio(maps, c.patch, c.band, c.sigma, c.frm_reduce, c.frm_floor)

    @torch.no_grad()
    def measure(self, batch, visible) -> None:
        """Add this micro-batch's FRM of every modality to the step's statistics."""
        for index, m in enumerate(self.modalities):
            rows = visible[m][batch.present[m]]
            if rows.any():
                values = self.frm(batch, m, rows)
                self.pending[0, index] += values.double().sum()
                self.pending[1, index] += len(values)

    @torch.no_grad()
    def update(self) -> None:
        """Once per optimizer step: the step's FRM (summed over ranks), the bank (eq. 2), T (eq. 6) and K (eq. 5)."""
        c = self.config
        sums, counts = reduce_across_ranks(self.pending).to(self.bank.device)
        self.pending.zero_()
        current = self.bank.clone()
        for index in range(len(self.modalities)):
            if counts[index] == 0:
                continue
            frm = float(sums[index] / counts[index])
            if c.scale == "first_steps":
                if self.scale_count[index] < c.scale_steps:
                    self.scale_sum[index] += frm
                    self.scale_count[index] += 1
                frm = frm / (float(self.scale_sum[index] / self.scale_count[index]) + c.sigma)
            current[index] = frm
            banked = bool(self.banked[index])
            self.bank[index] = c.momentum * self.bank[index] + (1 - c.momentum) * frm if banked else frm
            self.banked[index] = True
        if not self.banked.any():
            return
        ratio = current / (self.bank[self.banked].mean() + c.sigma)
        weight = modality_weight(ratio, c.alpha, c.beta, c.steepness, c.center)
        self.ratios.copy_(torch.where(self.banked, ratio, torch.zeros_like(ratio)))
        self.weights.copy_(torch.where(self.banked, weight, torch.ones_like(weight)))

    def auxiliary_losses(self, features: Features, availability, batch) -> dict[str, tuple[torch.Tensor, float]]:
        """The auxiliary heads' losses on what the model was shown (`visible`): a dropped modality has no
        feature to learn from."""
        model = self.owner
        visible = availability.visible
        if not model.training:
            return {}
        self.measure(batch, visible)
        if self.aux_heads is None:
            return {}
        losses = {}
        for index, m in enumerate(self.modalities):
            rows = visible[m]
            if rows.any():
                logits = self.aux_heads[m](features.cls[m][rows])
                losses[f"mwam_{m}"] = (model.task_loss(logits, batch.labels[rows]), float(self.weights[index]))
        return losses

    def on_before_optimizer_step(self, optimizer) -> None:
        """Decide this step's K and, in `gradient` and `hybrid` mode, scale the modalities' steps by it."""
        self.update()
        if self.config.mode == "loss":
            return
        weights = dict(zip(self.modalities, self.weights.tolist()))
        if self.config.apply == "gradient":
            for m, k in weights.items():
                for parameter in self.owner.modality_parameters(m):
                    if parameter.grad is not None:
                        parameter.grad.mul_(k)
            return
        for group in optimizer.param_groups:
            if group.get("modality") in weights:
                self._unscaled_lr.append((group, group["lr"]))
                group["lr"] = group["lr"] * weights[group["modality"]]

    def on_after_optimizer_step(self, optimizer) -> None:
        """Give the scaled groups their own learning rates back, for the schedule and the checkpoint."""
        for group, lr in self._unscaled_lr:
            group["lr"] = lr
        self._unscaled_lr.clear()

    def training_logs(self) -> dict[str, float]:
        logs = {}
        for index, m in enumerate(self.modalities):
            logs[f"mwam_k_{m}"] = float(self.weights[index])
            logs[f"mwam_ratio_{m}"] = float(self.ratios[index])
        return logs
