"""Parameter-efficient adapters for the frozen encoders, through `peft`.

The paper adapts every attention block with rank-1 LoRA on the query, key, value and attention-output
projections (not the MLP). Module names differ between model families, so the default target is one regular
expression that matches exactly those four projections inside numbered transformer layers of every family we
know (BERT-style `attention.self.query` / `attention.output.dense`; ViT, AST, CLIP and SigLIP `q_proj` ... `o_proj`
/ `out_proj`) and nothing else: not the MLP, not the BERT pooler, not SigLIP's attention-pooling head. A model
whose names differ can pass its own `target_modules`.

`none` puts no adapter on the encoder: it stays frozen, as MAP's and MoLT's sources keep their backbones, and only
the modules a method names (`ModelConfig.train_backbone`) train besides the method's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal

import peft
import torch.nn as nn

from .checks import check_field_types, with_current_names

ATTENTION_PROJECTIONS = (
    r".*\.\d+\.(?:"
    r"attention\.self\.(?:query|key|value)"
    r"|attention\.output\.dense"
    r"|(?:attention|self_attn)\.(?:q_proj|k_proj|v_proj|o_proj|out_proj)"
    r")"
)
"""Full-match pattern for the four attention projections of each transformer layer (peft uses `re.fullmatch`)."""

@dataclass
class AdapterConfig:
    """What adapter to put on every encoder. Defaults are the paper's (Table 6): LoRA, rank 1, alpha 1, dropout 0.1;
    `type="none"`: no adapter, the encoder frozen."""

    RENAMED: ClassVar[dict[str, str]] = {"kind": "type"}
    """Former field names (old -> new), still read from older run configs and saved models."""

    type: Literal["none", "lora", "dora", "vera"] = "lora"
    """The adapter on every encoder's attention projections; `none`: the encoders stay frozen."""
    rank: int = 1
    """The adapter's rank (paper: 1)."""
    alpha: float = 1.0
    """LoRA's and DoRA's scale alpha (VeRA has none)."""
    dropout: float = 0.1
    """Dropout of the adapter's input (paper: 0.1)."""
    seed: int = 0
    """VeRA only: seed of its shared frozen random projections (`projection_prng_key`)."""

    @classmethod
    def from_dict(cls, given: dict) -> "AdapterConfig":
        """From a mapping of its fields, former names included (`RENAMED`)."""
        return cls(**with_current_names(given, cls.RENAMED, "adapter"))

    def __post_init__(self):
        check_field_types(self, "adapter ")
        if self.rank < 1:
            raise ValueError(f"adapter rank must be >= 1, got {self.rank}")
        if self.alpha <= 0 or not 0 <= self.dropout < 1 or self.seed < 0:
            raise ValueError(
                f"adapter alpha must be > 0, its dropout in [0, 1) and its seed >= 0; got alpha {self.alpha}, "
                f"dropout {self.dropout}, seed {self.seed}"
            )

    def peft_config(self, target_modules: str | list[str]) -> peft.PeftConfig:
        if self.type == "vera":
            # VeRA has no alpha; its frozen projections are regenerated from the seed, so saving them is redundant.
            return peft.VeraConfig(
                r=self.rank,
                target_modules=target_modules,
                vera_dropout=self.dropout,
                projection_prng_key=self.seed,
                save_projection=False,
            )
        return peft.LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=target_modules,
            use_dora=self.type == "dora",
        )


def matched_modules(model: nn.Module, target_modules: str | list[str]) -> list[str]:
    """Names of the `nn.Linear` modules that `target_modules` selects, with peft's matching rules."""
    if isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)]
    suffixes = tuple(target_modules)
    return [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(n == s or n.endswith("." + s) for s in suffixes)
    ]


class Unadapted(nn.Module):
    """A frozen backbone without adapter, behind the two parts of peft's interface the encoders use: calling it
    and `get_base_model()`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def get_base_model(self) -> nn.Module:
        return self.model

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


def attach_adapter(
    backbone: nn.Module, config: AdapterConfig, target_modules: str | list[str] | None = None, name: str = "encoder"
) -> peft.PeftModel | Unadapted:
    """Freeze `backbone` and wrap it with the adapter on `target_modules` (default: attention projections), or,
    for `type="none"`, with no adapter at all.

    Raises a clear error when the targets match nothing, instead of training an unadapted encoder (peft's own
    silent-mismatch pitfall).
    """
    if config.type == "none":
        for parameter in backbone.parameters():
            parameter.requires_grad_(False)
        return Unadapted(backbone)
    targets = target_modules if target_modules is not None else ATTENTION_PROJECTIONS
    found = matched_modules(backbone, targets)
    if not found:
        raise ValueError(
            f"adapter targets match no linear layer of the {name} encoder "
            f"({type(backbone).__name__}); pass target_modules for this model family"
        )
    for parameter in backbone.parameters():
        parameter.requires_grad_(False)
    return peft.get_peft_model(backbone, config.peft_config(targets))
