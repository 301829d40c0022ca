"""MoLT: robust latent representation tuning (Sun and Song, "Robust Latent Representation Tuning for Image-text
Classification", arXiv 2406.06048).

The encoders stay frozen. For each tapped layer l, a Modality Latent Translation (MoLT) module projects every
modality's hidden states into a shared latent space of width d_c, lets each modality attend to the others, and
pools the result into a robust feature R_l; a correlation loss (L_CCA) pulls the modalities' latent features
together. A fusion module then mixes {R_l} with the modality embeddings for the prediction. With X_{m,l} the
states [T_m, d_m] of modality m after layer l:

    X'_{m,l} = W_{m,l} X_{m,l} + b_{m,l}                                       (projection into d_c)
    H_{m,l}  = softmax(Q_m K_{-m}^T / sqrt(d_c)) V_{-m},   Q_m = X'_m W^Q_m     (cross-attention)
               K_{-m}, V_{-m}: the keys X'_n W^K_n and values X'_n W^V_n of every other modality n, concatenated
    h_{m,l}  = mean over the tokens of H_{m,l}
    R_l      = FBP(h_{1,l}, ..., h_{M,l})
    fused    = TransformerEncoder([FUS], R_1 .. R_L, P_1 c_1 .. P_M c_M) at [FUS]   (c_m: final CLS of m)
    L        = alpha L_CE + beta L_CCA,   alpha = 1,
    L_CCA    = -(1 / (L P)) sum over layers l and modality pairs (a, b) of || S_aa^{-1/2} S_ab S_bb^{-1/2} ||_*

with S the batch covariances of the pair (z_{a,l}, z_{b,l}) over the samples that truly have both modalities,
plus deep CCA's ridge r I on S_aa and S_bb, and P the number of pairs with at least two such samples (for two
modalities, -(1/L) sum_l ||M_l||_*). z_{m,l} = C_{m,l} h_{m,l} is deep CCA's output layer: a linear map of the
pooled latent to `cca_size` (o) dimensions. Each term is a sum of canonical correlations, within [0, rank],
rank = min(o, n - 1) for n samples; it is computed in float64 whatever the autocast. The loss is zero when no pair
has two such samples.

Only the abstract of the paper was read. The projection and cross-attention equations are those a third-party
review of the paper quotes; everything else is a reconstruction, and every choice the source leaves open is an
option:
- `fbp`: the paper never expands "FBP". `mfb` (default) reads it as Factorized Bilinear Pooling (MFB, Yu et al.,
  ICCV 2017): z~ = SumPool_k((U_1^T h_1) o ... o (U_M^T h_M)), z = l2norm(sign(z~) sqrt|z~|), with
  k = `mfb_factor` (5) and o = d_c. For two modalities this is MFB exactly; for M > 2, the elementwise product
  runs over every modality's projection. This reading is a hypothesis. `concat` is a plain alternative: a linear
  map of the concatenated h_{m,l}.
- `latent_size` (d_c, 256). `layers`: which layer outputs to tap (1-based, default all). They are counted in the
  shallowest encoder; an encoder with more layers taps layer ceil(l * depth / shallowest depth), so that the
  last layer is paired with the last.
- `normalize_states` (default on): each tapped state is layer-normalised (no learned scale) before the
  projection. Pre-LN encoders (ViT, CLIP) pass on residual streams that grow with depth, while BERT's states are
  normalised. `False` is the projection as written.
- `cross_heads` (1: the equations' single softmax). With more heads, d_c is split between them and the heads are
  concatenated without an output projection. No residual connection is added, as in the equations.
- `pooling`: `mean` (default) over each modality's valid query tokens, which excludes text padding, or `first`
  (the class token's output).
- `cca_features`: the loss reads the pooled cross-attended h_{m,l} (`attended`, default) or the pooled
  projections X'_{m,l} (`projected`). `cca_weight` (beta, 0.1). `cca_components`: sum of the top k canonical
  correlations instead of all of them (the trace norm). With more than two modalities, the loss averages over
  every pair.
- `cca_size` (o, 16; None reads the d_c-wide latents themselves). A batch of n samples estimates the covariances
  of o dimensions only where n > o: with n <= o every canonical correlation of the batch is 1 for any data, so
  that the loss measures nothing. o = 16 fits the demo's batches of 32 and the source's batches of 64 (the
  reference notes), where d_c = 256 fits neither; a batch of n <= o warns once, saying what to set.
- `cca_ridge` (r, 1e-3) and `cca_ridge_relative` (default on): r times the covariance's mean variance
  (trace / o), so that scaling the features changes nothing; off, deep CCA's absolute r I, which a loss can
  outgrow by inflating the features.
- Fusion: the `transformer` fusion (`robustmm.fusions.transformer`), part of the method (its input includes the
  R_l, so `fusion` has no other choice): `fusion_layers` (2) post-norm Transformer encoder layers of
  `fusion_heads` (4) heads, width d_c, feed-forward width 4 d_c and `fusion_dropout` (0.1). A learned [FUS]
  token and learned token-type embeddings (one per slot: [FUS], each R_l, each modality's CLS) are used, because
  attention alone cannot tell the tokens apart. A modality that is not shown has its CLS token masked out of the
  fusion.
- Absent modality: its states at each tapped layer are replaced by one learned mask token of that layer and
  modality, in the encoder's width, before the projection. It becomes that modality's only token, so its query
  is filled from the available modalities by the cross-attention.
- Training: the source gives no modality-dropout schedule (a 30% drop rate is one reading). This library's
  `modality_dropout` applies, `leave_one_out` by default (each step keeps every modality or drops exactly one),
  so that a missing modality at test time is in distribution. A dropped modality is masked in the fusion path,
  but its encoder still runs, so that L_CCA sees the truly present data. The paper freezes the encoders, and so
  does the default `adapter="none"` (`adapter=lora` adds robustmm's rank-1 LoRA).
- Learning rate: the reconstruction trains MoLT's modules at 1e-4 (AdamW, weight decay 1e-2, batch 64, 20
  epochs); the paper states none. They train at 0.1x the run's rate (`module_lr_scale`): 1e-4 under the paper
  configs' 1e-3, 1e-3 under the demo's 1e-2, where the full rate made the fusion diverge; the head trains at the
  run's rate.
Encoding does not depend on which modalities are shown, so scenario evaluation encodes each test batch once:
`encode` keeps the tapped states, and everything after them runs in `fuse`.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..adapters import AdapterConfig
from ..model import Features, ModalityDropoutChoice, ModelConfig, MultimodalModel, scatter_rows
from ..processing import Batch
from ..registry import register_method

POWER_EPS = 1e-8
"""Keeps the gradient of MFB's signed square root finite at zero."""


@dataclass
class MoLTConfig(ModelConfig):
    modality_dropout: ModalityDropoutChoice = "leave_one_out"
    latent_size: int = 256
    """d_c: width of the shared latent space, the robust features and the fusion."""
    layers: list[int] | None = None
    """Layer outputs to tap (1-based, counted in the shallowest encoder); None taps every layer."""
    normalize_states: bool = True
    """Layer-normalise each tapped state (no learned scale) before the projection; False: as written."""
    cross_heads: int = 1
    """Heads of the cross-attention (1: the equations' single softmax); d_c is split between them."""
    pooling: Literal["mean", "first"] = "mean"
    """`mean` over each modality's valid tokens (text padding excluded), or `first`: the class token's output."""
    fbp: Literal["mfb", "concat"] = "mfb"
    """FBP read as Factorized Bilinear Pooling (`mfb`, a hypothesis), or `concat`: a linear map of the
    concatenated pooled features."""
    mfb_factor: int = 5
    """k of MFB's sum pooling."""
    fusion: Literal["transformer"] = "transformer"
    """MoLT fuses the robust features and the class tokens with its Transformer (`fusion_layers`, `fusion_heads`,
    `fusion_dropout`)."""
    cca_weight: float = 0.1
    """beta: the correlation loss's weight."""
    cca_ridge: float = 1e-3
    cca_ridge_relative: bool = True
    """The ridge is `cca_ridge` times each covariance's mean variance (scale-free); False: `cca_ridge` itself."""
    cca_size: int | None = 16
    """o: width of deep CCA's output layer on which the correlation is measured; None: the latents (d_c)."""
    cca_components: int | None = None
    """Sum only the top k canonical correlations; None sums all of them (the trace norm)."""
    cca_features: Literal["attended", "projected"] = "attended"
    """The correlation loss reads the pooled cross-attended features (`attended`) or the pooled projections."""
    module_lr_scale: float = 0.1
    """MoLT's own modules (projections, attention, FBP, mask tokens, fusion) train at 0.1x the run's learning
    rate: 1e-4, the reconstruction's rate, under the paper configs' 1e-3. On the demo (lr 1e-2), the 3.7M-parameter
    fusion diverges at the full rate."""
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(type="none"))
    """MoLT freezes its foundation models: no adapter."""

    def __post_init__(self):
        super().__post_init__()
        if len(self.encoders) < 2:
            raise ValueError("MoLT needs at least two modalities")
        for name in ("latent_size", "cross_heads", "mfb_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name, heads in (("cross_heads", self.cross_heads), ("fusion_heads", self.fusion_options["heads"])):
            if self.latent_size % heads:
                raise ValueError(f"{name}={heads} does not divide latent_size={self.latent_size}")
        if self.layers is not None:
            layers = list(self.layers)
            numbered = all(isinstance(layer, int) and layer >= 1 for layer in layers)
            if not layers or not numbered or len(set(layers)) < len(layers):
                raise ValueError(f"layers must be distinct layer numbers from 1, or None for all, got {self.layers!r}")
            self.layers = sorted(layers)
        if self.cca_size is not None and self.cca_size < 1:
            raise ValueError(f"cca_size must be at least 1, or None for the latents, got {self.cca_size}")
        if self.cca_components is not None and self.cca_components < 1:
            raise ValueError(f"cca_components must be at least 1, or None for all, got {self.cca_components}")
        if self.cca_weight < 0 or self.cca_ridge <= 0:
            raise ValueError(f"cca_weight must be >= 0 and cca_ridge > 0, got {self.cca_weight}, {self.cca_ridge}")


def tapped_layers(layers: list[int] | None, depths: dict[str, int]) -> dict[str, list[int]]:
    """Modality -> indices into its encoder's hidden states (0 is the embedding output) of the tapped layers."""
    shallowest = min(depths.values())
    slots = layers or list(range(1, shallowest + 1))
    if max(slots) > shallowest:
        raise ValueError(
            f"layers={layers}: the shallowest encoder has {shallowest} layers; choose from 1..{shallowest}"
        )
    return {m: [math.ceil(slot * depth / shallowest) for slot in slots] for m, depth in depths.items()}


def canonical_correlation_sum(
    a: torch.Tensor, b: torch.Tensor, ridge: float, components: int | None = None, relative_ridge: bool = True
) -> torch.Tensor:
    """||S_aa^{-1/2} S_ab S_bb^{-1/2}||_* of the rows of a and b ([..., n, d] each, n >= 2; leading dimensions are
    a batch, e.g. the tapped layers), or the sum of its top `components` singular values, in float64: each
    singular value a canonical correlation in [0, 1], at most rank = min(d_a, d_b, n - 1) of them.

    The ridge is `ridge` I, or with `relative_ridge` `ridge` times the covariance's mean variance, which leaves
    the sum unchanged when the features are scaled. Whitening by Cholesky factors, L_a^{-1} S_ab L_b^{-T}, has the
    same singular values, because L_a^{-1} is Q S_aa^{-1/2} for an orthogonal Q. Unlike an eigendecomposition,
    its gradient stays finite where eigenvalues repeat, as they do in every covariance of fewer samples than
    dimensions."""
    with torch.autocast(a.device.type, enabled=False):
        a, b = a.double(), b.double()
        a, b = a - a.mean(-2, keepdim=True), b - b.mean(-2, keepdim=True)
        samples = a.shape[-2]
        scale = 1.0 / (samples - 1)

        def whitening(x: torch.Tensor) -> torch.Tensor:
            covariance = scale * x.mT @ x
            eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
            variance = covariance.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None]
            strength = ridge * variance if relative_ridge else ridge
            return torch.linalg.cholesky(covariance + (strength + torch.finfo(x.dtype).tiny) * eye)

        whiten_a, whiten_b = whitening(a), whitening(b)
        whitened = torch.linalg.solve_triangular(whiten_a, scale * a.mT @ b, upper=False)
        whitened = torch.linalg.solve_triangular(whiten_b, whitened.mT, upper=False).mT
        rank = min(a.shape[-1], b.shape[-1], samples - 1)
        kept = rank if components is None else min(components, rank)
        return torch.linalg.svdvals(whitened)[..., :kept].clamp(max=1.0).sum(-1)


def correlation_loss(
    pooled_by_layer: list[dict[str, torch.Tensor]],
    present: dict[str, torch.Tensor],
    ridge: float,
    components: int | None = None,
    relative_ridge: bool = True,
) -> torch.Tensor:
    """L_CCA: minus the mean, over tapped layers and modality pairs, of the pair's summed canonical correlations
    over the samples that truly have both, in float32. Pairs with fewer than two such samples are left out, and
    the loss is zero when every pair is left out. The layers of a pair are computed as one batch."""
    modalities = list(pooled_by_layer[0])
    terms = []
    for a, b in itertools.combinations(modalities, 2):
        both = present[a] & present[b]
        if int(both.sum()) >= 2:
            stacked = [torch.stack([pooled[m][both] for pooled in pooled_by_layer]) for m in (a, b)]
            terms.append(canonical_correlation_sum(*stacked, ridge, components, relative_ridge))
    if not terms:
        return pooled_by_layer[0][modalities[0]].new_zeros((), dtype=torch.float32)
    return -torch.cat(terms).mean().float()


def pool(tokens: torch.Tensor, valid: torch.Tensor, how: str) -> torch.Tensor:
    """[B, T, d] -> [B, d]: mean over the valid tokens, or the first token."""
    if how == "first":
        return tokens[:, 0]
    weights = valid.to(tokens.dtype).unsqueeze(-1)
    return (tokens * weights).sum(1) / weights.sum(1)


class CrossAttention(nn.Module):
    """One tapped layer's cross-attention: each modality's tokens query the other modalities' tokens."""

    def __init__(self, modalities: list[str], width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.ModuleDict({m: nn.Linear(width, width) for m in modalities})
        self.key = nn.ModuleDict({m: nn.Linear(width, width) for m in modalities})
        self.value = nn.ModuleDict({m: nn.Linear(width, width) for m in modalities})

    def split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, heads, T, d / heads]

    def forward(self, tokens: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """tokens: modality -> [B, T_m, d_c]; valid: modality -> [B, T_m] bools, True where a token may be attended
        to (each row has at least one)."""
        keys = {m: self.split(self.key[m](x)) for m, x in tokens.items()}
        values = {m: self.split(self.value[m](x)) for m, x in tokens.items()}
        attended = {}
        for m, x in tokens.items():
            others = [n for n in tokens if n != m]
            mask = torch.cat([valid[n] for n in others], 1)[:, None, None, :]
            out = F.scaled_dot_product_attention(
                self.split(self.query[m](x)),
                torch.cat([keys[n] for n in others], 2),
                torch.cat([values[n] for n in others], 2),
                attn_mask=mask,
            )
            attended[m] = out.transpose(1, 2).flatten(2)
        return attended


class FactorizedBilinearPooling(nn.Module):
    """MFB of M vectors: z~ = SumPool_k(prod_m U_m^T h_m), z = l2norm(sign(z~) sqrt|z~|); output width d_c."""

    def __init__(self, modalities: list[str], width: int, factor: int):
        super().__init__()
        self.factor = factor
        self.factors = nn.ModuleDict({m: nn.Linear(width, width * factor) for m in modalities})

    def forward(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        product = math.prod(self.factors[m](h) for m, h in pooled.items())
        summed = product.unflatten(-1, (-1, self.factor)).sum(-1)
        powered = summed.sign() * ((summed.abs() + POWER_EPS).sqrt() - POWER_EPS**0.5)
        return F.normalize(powered, dim=-1)


class ConcatPooling(nn.Module):
    """The plain alternative to MFB: a linear map of the concatenated pooled features."""

    def __init__(self, modalities: list[str], width: int):
        super().__init__()
        self.linear = nn.Linear(len(modalities) * width, width)

    def forward(self, pooled: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(torch.cat(list(pooled.values()), -1))


@register_method("molt")
class MoLT(MultimodalModel):
    """Robust latent representation tuning: per-layer latent translation, MFB and a fusion Transformer."""

    config_class = MoLTConfig
    departures = (
        "only the abstract was read: FBP read as MFB, the fusion Transformer and L_CCA's form are reconstructions",
        "states layer-normalised before the projection (normalize_states=false: as written)",
        "L_CCA on deep CCA's 16-wide output layer with a relative ridge (cca_size=null, cca_ridge_relative=false: "
        "the latents with r I)",
        "its modules train at 0.1x the run's lr: 1e-4, the reconstruction's rate, under lr 1e-3",
    )

    def build(self) -> None:
        c = self.config
        depths = {m: encoder.num_layers for m, encoder in self.encoders.items()}
        self.taps = tapped_layers(c.layers, depths)
        count = len(next(iter(self.taps.values())))
        width, modalities = c.latent_size, self.modalities
        self.projections = nn.ModuleDict(
            {m: nn.ModuleList(nn.Linear(d, width) for _ in range(count)) for m, d in self.hidden_sizes.items()}
        )
        self.cross_attention = nn.ModuleList(CrossAttention(modalities, width, c.cross_heads) for _ in range(count))
        self.fbp = nn.ModuleList(
            FactorizedBilinearPooling(modalities, width, c.mfb_factor)
            if c.fbp == "mfb"
            else ConcatPooling(modalities, width)
            for _ in range(count)
        )
        self.mask_tokens = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(count, d) * 0.02) for m, d in self.hidden_sizes.items()}
        )
        self.fusion = self.build_fusion(width=width, extra_tokens=count)  # here, where its parameters are drawn
        if c.cca_size is not None:
            self.cca_outputs = nn.ModuleDict(
                {m: nn.ModuleList(nn.Linear(width, c.cca_size) for _ in range(count)) for m in modalities}
            )
        self._warned_small_batch = False

    def encode(self, batch: Batch, visible: dict[str, torch.Tensor]) -> Features:
        """Each encoder runs once on the samples that truly have its modality, dropped ones included (L_CCA reads
        them). Only the tapped layers' states are kept, with which of their tokens are real (not padding)."""
        cls, states, valid = {}, {}, {}
        size = len(batch)
        for m in self.modalities:
            present = batch.present[m]
            encoded = self.encode_present(batch, m, present, output_hidden_states=True)
            if encoded is None:
                cls[m] = self.zeros(size, self.hidden_sizes[m])
                states[m] = [self.zeros(size, 1, self.hidden_sizes[m])] * len(self.taps[m])
                valid[m] = present.new_zeros(size, 1)
                continue
            cls[m] = encoded.cls
            states[m] = [encoded.hidden_states[index] for index in self.taps[m]]
            mask = batch.inputs[m].get("attention_mask")
            length = states[m][0].shape[1]
            valid[m] = scatter_rows(mask.bool(), present) if mask is not None else present[:, None].expand(-1, length)
        return Features(cls, {"states": states, "valid": valid})

    def translate(self, features: Features, shown: dict[str, torch.Tensor]):
        """The MoLT modules of every tapped layer: (pooled projections X'_m, pooled cross-attended H_m), each a list
        over layers of modality -> [B, d_c]. A modality not `shown` in a row (not visible for the fusion, not
        present for L_CCA) is that layer's mask token there, as its only token."""
        projected, attended = [], []
        for layer, attention in enumerate(self.cross_attention):
            tokens, valid = {}, {}
            for m in self.modalities:
                states = features.extras["states"][m][layer]
                if self.config.normalize_states:
                    states = F.layer_norm(states, states.shape[-1:])
                first = torch.where(
                    shown[m][:, None], states[:, 0], self.mask_tokens[m][layer].to(states.dtype)
                )
                states = torch.cat([first[:, None], states[:, 1:]], 1)
                real = features.extras["valid"][m] & shown[m][:, None]
                valid[m] = torch.cat([torch.ones_like(real[:, :1]), real[:, 1:]], 1)
                tokens[m] = self.projections[m][layer](states)
            crossed = attention(tokens, valid)
            projected.append({m: pool(tokens[m], valid[m], self.config.pooling) for m in self.modalities})
            attended.append({m: pool(crossed[m], valid[m], self.config.pooling) for m in self.modalities})
        return projected, attended

    def fuse(self, features: Features, visible: dict[str, torch.Tensor]) -> torch.Tensor:
        _, attended = self.translate(features, visible)
        robust = [fbp(pooled) for fbp, pooled in zip(self.fbp, attended)]
        return self.fusion(features.cls, visible, robust)

    def auxiliary_losses(self, features: Features, availability, batch) -> dict[str, tuple[torch.Tensor, float]]:
        """L_CCA (weight beta) on the latent features of the present modalities, dropped ones included."""
        c = self.config
        present = availability.present
        projected, attended = self.translate(features, present)
        pooled = attended if c.cca_features == "attended" else projected
        if c.cca_size is not None:
            pooled = [{m: self.cca_outputs[m][layer](h) for m, h in by_modality.items()}
                      for layer, by_modality in enumerate(pooled)]
        self.warn_if_batch_too_small(present)
        loss = correlation_loss(pooled, present, c.cca_ridge, c.cca_components, c.cca_ridge_relative)
        return {"cca": (loss, c.cca_weight)}

    def warn_if_batch_too_small(self, present: dict[str, torch.Tensor]) -> None:
        """Once per model: a batch whose modality pairs have no more samples than dimensions cannot estimate the
        covariances, and every canonical correlation is then 1 whatever the data."""
        width = self.config.cca_size or self.config.latent_size
        pairs = [int((present[a] & present[b]).sum()) for a, b in itertools.combinations(self.modalities, 2)]
        most = max(pairs)
        if self._warned_small_batch or not self.training or most < 2 or most > width:
            return
        self._warned_small_batch = True
        option = "cca_size" if self.config.cca_size is not None else "latent_size"
        warnings.warn(
            f"MoLT's correlation loss sees {most} samples with both modalities against {width} dimensions "
            f"({option}): with n <= {width} every canonical correlation is 1 for any data and the loss measures "
            f"nothing. Set the batch size above {width}, or {option} below {most}.",
            stacklevel=2,
        )
