"""MAP: missing-aware prompts (Lee et al., "Multimodal Prompting with Missing Modalities for Visual Recognition",
CVPR 2023), ported from ViLT's single stream to separate encoders.

MAP learns one set of prompts per missing case (complete, text missing, image missing) and feeds each sample the
set of its case, so that the frozen transformer is told which modalities it is missing. Frozen in MAP's code:
the transformer, the text and token-type embeddings; trained: the prompts, ViLT's pooler and the head
`Linear(d, 2d)-LayerNorm-GELU-Linear(2d, C)`. Here the encoders are frozen alike (`adapter="none"`, the
default), and the head is the pooler (`Linear(d, d)`, tanh) on the fused feature, then MAP's head
(`head="map"`). Its configs: prompt length 16, prompts in the first 6 layers (`prompt_layers: [0..5]`),
learnable, `input` type by default.

Here every encoder carries prompts, one set per availability pattern: 2^M - 1 patterns for M modalities
(`patterns`, complete first), `P[pattern, layer] in R^{length x d}` per encoder and layer
l < `prompt_depth`. A sample with pattern s is encoded, by every encoder, with the prompts `P[s, l]` of each
layer:
- `input` (MAP's default): at each prompt layer l the tokens `P[s, l]` are inserted in front of the sequence
  and stay for the following layers, so that after depth D there are D x length prompt tokens (MAP's
  `total_prompt_len`); the class token is read after them.
- `attention`: `P[s, l]` takes part in layer l only and is removed after it, so the prompts act as extra keys
  and values of that layer's attention. MAP prepends its attention prompts to the keys and values directly
  (prefix tuning: half the prompt as keys, half as values); here they enter the layer as tokens, through its
  LayerNorm and key/value projections, which needs no fork of the attention module.
The fused feature is the sum of the modalities' class features (the `fusion` option, default `sum`, fuses them,
every modality shown), and a missing modality is encoded from its placeholder (as MAP's ViLT reads its dummy input)
with the prompts of the sample's pattern; that encoding is the same for every sample of one pattern, so it is
computed once per pattern and batch.

Optimisation: MAP's code trains everything at lr 1e-2 (AdamW, weight decay 2e-2, batch 256, 20 epochs, warm-up
over 10% of steps); its prompts, pooler and head train at the run's learning rate here (`module_lr_scale` 1), so a
run at `lr: 1.0e-2` (the demo's) trains them at the source's rate. The shipped paper configs keep CMPT's 1e-3.

Choices where MAP is silent or does otherwise, each an option:
- `head`: `map` (default, above; the pooler starts from random weights, where MAP's is ViLT's pretrained one)
  or `linear`, one linear layer on the fused feature.
- `prompt_init`: `map` (MAP's code: zeros with one row of ones, a different row for each pattern, so that the
  patterns start apart) or `normal` (N(0, 0.02^2)).
- Training patterns: MAP trains on the protocol's missing data. Where training data is complete (the demo), its
  missing-pattern prompts would never be trained, so `modality_dropout` defaults to `leave_one_out`; set it to
  `none` to train on the data as given, as MAP's code does.
- The placeholder of a missing modality: `placeholder` / `audio_placeholder` as in `baseline` (MAP's code: an
  image of ones after normalisation, `placeholder=ones`; an empty text).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from ..adapters import AdapterConfig
from .. import availability
from ..encoders import EncoderContext
from ..model import Features, ModalityDropoutChoice
from ..registry import register_method
from .baseline import PlaceholderConfig, PlaceholderFusion


@dataclass
class MAPConfig(PlaceholderConfig):
    modality_dropout: ModalityDropoutChoice = "leave_one_out"
    prompt_length: int = 16
    """Prompt tokens per layer and pattern (MAP: 16)."""
    prompt_depth: int = 6
    """Prompt layers 0 .. depth - 1 (MAP: 6 of ViLT's 12), clamped to the shallowest encoder's depth."""
    prompt_type: Literal["input", "attention"] = "input"
    """`input`: each layer's prompts are inserted and stay for the following layers (MAP's default);
    `attention`: they take part in their layer only, as extra keys and values."""
    prompt_init: Literal["map", "normal"] = "map"
    """`map`: zeros with one row of ones, a different row per pattern (MAP's code); `normal`: N(0, 0.02^2)."""
    head: Literal["map", "linear"] = "map"
    """`map`: ViLT's pooler then MAP's `Linear-LayerNorm-GELU-Linear`; `linear`: one linear layer."""
    adapter: AdapterConfig = field(default_factory=lambda: AdapterConfig(type="none"))
    """MAP freezes its transformer: no adapter (`adapter=lora` adds robustmm's rank-1 LoRA)."""

    def __post_init__(self):
        super().__post_init__()
        if self.prompt_length < 1 or self.prompt_depth < 1:
            raise ValueError(
                f"prompt_length and prompt_depth must be >= 1, got {self.prompt_length}, {self.prompt_depth}"
            )


@register_method("map")
class MissingAwarePrompts(PlaceholderFusion):
    """Missing-aware prompts: each encoder is prompted with the learned prompts of the sample's availability pattern."""

    config_class = MAPConfig
    encodes_by_availability = True
    departures = (
        "separate encoders, each prompted, fused by a sum, where MAP prompts ViLT's single stream",
        "the pooler starts from random weights (MAP: ViLT's pretrained pooler); head=linear drops pooler and MLP",
        "modality_dropout=leave_one_out trains the missing-pattern prompts on complete data (MAP: none, "
        "training on the protocol's missing data)",
        "prompts, pooler and head train at the run's lr (MAP: 1e-2, batch 256, 20 epochs: the paper configs' "
        "by_method.map)",
        "a missing image is a black image (placeholder=ones: MAP's code)",
    )

    def build_head(self) -> nn.Module:
        """MAP's head: ViLT's pooler (dense, tanh), then `Linear(d, 2d)-LayerNorm-GELU-Linear(2d, C)`."""
        width, classes = self.fused_size(), self.config.num_classes
        if self.config.head == "linear":
            return nn.Linear(width, classes)
        return nn.Sequential(
            nn.Linear(width, width), nn.Tanh(),
            nn.Linear(width, 2 * width), nn.LayerNorm(2 * width), nn.GELU(), nn.Linear(2 * width, classes),
        )

    def build(self) -> None:
        c = self.config
        self.patterns = availability.patterns(self.modalities)
        self.depth = min(c.prompt_depth, *(e.num_layers for e in self.encoders.values()))
        self.prompts = nn.ParameterDict(
            {m: nn.Parameter(self.initial_prompts(self.hidden_sizes[m])) for m in self.modalities}
        )
        for m, encoder in self.encoders.items():
            for layer in range(self.depth):
                keep = c.prompt_type == "input"
                encoder.insert_tokens(layer, f"prompts{layer}", c.prompt_length, self.prompt_provider(m, layer), keep)

    def initial_prompts(self, width: int) -> torch.Tensor:
        """[patterns, depth, length, width]."""
        c = self.config
        shape = (len(self.patterns), self.depth, c.prompt_length, width)
        if c.prompt_init == "normal":
            return torch.randn(shape) * 0.02
        prompts = torch.zeros(shape)
        for index in range(len(self.patterns)):
            prompts[index, :, index % c.prompt_length] = 1.0
        return prompts

    def prompt_provider(self, modality: str, layer: int):
        def provider(context: EncoderContext) -> torch.Tensor:
            return self.prompts[modality][context.pattern_index(self.modalities), layer]

        return provider

    def encode(self, batch, visible) -> Features:
        """Each modality of each sample with its pattern's prompts; a missing one from its placeholder."""
        pattern = EncoderContext(visible).pattern_index(self.modalities)
        device = self.device
        cls = {}
        for m in self.modalities:
            encoded = self.encode_present(batch, m, visible[m], visible)
            features = encoded.cls if encoded else self.zeros(len(batch), self.hidden_sizes[m])
            for index in pattern[~visible[m]].unique().tolist():
                rows = (~visible[m] & (pattern == index)).unsqueeze(-1)
                seen = {n: torch.tensor([n in self.patterns[index]], device=device) for n in self.modalities}
                features = torch.where(rows, self.encode_placeholder(m, device, EncoderContext(seen)), features)
            cls[m] = features
        return Features(cls)

    def fuse(self, features: Features, visible) -> torch.Tensor:
        """Every modality's class feature (a missing one's from its placeholder), fused by `fusion`."""
        return self.fusion(features.cls, self.every_modality(visible))
