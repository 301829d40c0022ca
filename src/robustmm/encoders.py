"""A frozen pretrained `transformers` encoder with a peft adapter and optional learnable proxy tokens.

Proxy tokens are inserted by a forward hook on the encoder's embedding layer, so no model file is forked: the hook
turns the embedding output `[CLS, T]` into `[P_1 .. P_k, CLS, T]` (paper eq. 2; the proxies get no position
embedding, which the embedding layer has already added to the other tokens) and the attention mask, where the
model takes one, is extended by k ones in front.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from huggingface_hub.utils import HFValidationError, validate_repo_id
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoConfig, AutoModel

from .adapters import AdapterConfig, attach_adapter
from .processing import KINDS, PROCESSORS

KIND_BY_MODEL_TYPE = {
    **dict.fromkeys(
        ("bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "deberta", "deberta-v2", "mpnet"), "text"
    ),
    **dict.fromkeys(
        ("vit", "deit", "beit", "dinov2", "clip", "clip_vision_model", "siglip", "siglip_vision_model"), "image"
    ),
    **dict.fromkeys(("audio-spectrogram-transformer",), "audio"),
}
"""Families whose modality kind can be inferred when the modality key is not itself a kind name."""

POOLING_BY_MODEL_TYPE = {"siglip": "head", "siglip_vision_model": "head"}
"""Families without a class token: their attention-pooling head over the non-proxy tokens stands in for CLS."""

TOWERS = {"text": "text_model", "image": "vision_model", "video": "vision_model"}
"""Attribute of the tower to keep when a dual-encoder checkpoint (CLIP, SigLIP) is loaded for one modality."""


@dataclass
class EncoderConfig:
    """Which pretrained encoder reads one modality, and how its inputs are prepared."""

    name_or_path: str
    kind: str | None = None
    """text / image / audio / video; inferred from the modality key or the model family when left out."""
    max_length: int | None = None
    """Text: maximum tokens (paper: 40 for Food-101, 256 for MM-IMDb); None takes the tokenizer's limit, at most 512."""
    num_frames: int = 3
    """Video: frames encoded per clip; their CLS and proxy outputs are averaged (paper: 3)."""
    target_modules: str | list[str] | None = None
    """Adapter targets; None means the query, key, value and attention-output projections of every layer."""
    dropout: bool = False
    """Keep the pretrained model's own dropout (BERT: 0.1) active in training. Off by default, a choice the paper
    leaves open: the encoder is frozen, so its dropout would only add noise to the features that the adapters
    and the head learn from; the adapters keep their own dropout (paper: 0.1) either way."""

    def __post_init__(self):
        # A local folder is recorded absolutely, so a saved model loads from any working directory.
        if Path(self.name_or_path).exists():
            self.name_or_path = str(Path(self.name_or_path).resolve())

    def model_config(self, modality: str):
        """The encoder's `transformers` config. Read before anything else of the encoder, so that one that cannot be
        found is reported with its modality (for a local path that does not exist, transformers answers with the
        rules of hub ids)."""
        if not Path(self.name_or_path).exists():
            try:
                validate_repo_id(self.name_or_path)
            except HFValidationError:
                raise ValueError(
                    f"modality {modality!r}: no folder {self.name_or_path}, and {self.name_or_path!r} is not a hub id"
                ) from None
        try:
            return AutoConfig.from_pretrained(self.name_or_path)
        except (OSError, ValueError) as error:
            raise ValueError(f"modality {modality!r}: cannot load encoder {self.name_or_path!r}: {error}") from error

    def resolve_kind(self, modality: str) -> str:
        config = self.model_config(modality)
        if self.kind is not None:
            if self.kind not in KINDS:
                raise ValueError(f"modality {modality!r}: unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
            return self.kind
        if modality in KINDS:
            return modality
        model_type = config.model_type
        if model_type not in KIND_BY_MODEL_TYPE:
            raise ValueError(
                f"cannot tell which kind of input modality {modality!r} is ({model_type} model); pass kind="
                f"one of {', '.join(KINDS)}"
            )
        return KIND_BY_MODEL_TYPE[model_type]

    def processor(self, kind: str):
        options = {"text": {"max_length": self.max_length}, "video": {"num_frames": self.num_frames}}
        return PROCESSORS[kind](self.name_or_path, **options.get(kind, {}))


def load_backbone(name_or_path: str, kind: str) -> nn.Module:
    """`AutoModel.from_pretrained`, keeping only the relevant tower of a dual-encoder checkpoint."""
    model = AutoModel.from_pretrained(name_or_path, dtype=torch.float32)
    tower = TOWERS.get(kind)
    if tower and hasattr(model, tower) and not hasattr(model, "embeddings"):
        model = getattr(model, tower)
    if not hasattr(model, "embeddings"):
        raise ValueError(f"{name_or_path}: {type(model).__name__} has no `embeddings` module to insert proxy tokens after")
    return model


class ModalityEncoder(nn.Module):
    """Encodes one modality: returns the final CLS feature and the final outputs of its k proxy tokens."""

    def __init__(self, modality: str, config: EncoderConfig, adapter: AdapterConfig, num_proxies: int = 0):
        super().__init__()
        self.modality = modality
        self.kind = config.resolve_kind(modality)
        backbone = load_backbone(config.name_or_path, self.kind)
        self.model_type = backbone.config.model_type
        self.hidden_size = backbone.config.hidden_size
        self.pooling = POOLING_BY_MODEL_TYPE.get(self.model_type, "cls")
        self.backbone = attach_adapter(backbone, adapter, config.target_modules, name=modality)
        self.num_proxies = num_proxies
        if num_proxies:
            self.proxy_tokens = nn.Parameter(torch.randn(num_proxies, self.hidden_size) * 0.02)
            self.backbone.get_base_model().embeddings.register_forward_hook(self._insert_proxy_tokens)
        self.encoder_dropout = config.dropout
        self.train()

    def train(self, mode: bool = True) -> "ModalityEncoder":
        """Unless `EncoderConfig.dropout`, the frozen encoder's own modules stay in eval mode (no dropout) while
        its adapter layers, and so their dropout, follow `mode`."""
        super().train(mode)
        if not self.encoder_dropout:
            self.backbone.eval()
            for layer in self.backbone.modules():
                if isinstance(layer, BaseTunerLayer):
                    layer.train(mode)
        return self

    def _insert_proxy_tokens(self, module, args, embeddings: torch.Tensor) -> torch.Tensor:
        proxies = self.proxy_tokens.to(embeddings.dtype).expand(embeddings.shape[0], -1, -1)
        return torch.cat([proxies, embeddings], dim=1)

    def _read_tokens(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split the last layer into (CLS feature [n, d], proxy outputs [n, k, d])."""
        base = self.backbone.get_base_model()
        k = self.num_proxies
        proxies = hidden[:, :k]
        if self.pooling == "head":
            return base.head(hidden[:, k:]), proxies
        cls = hidden[:, k]
        # CLIP's vision tower leaves its final norm to the pooled token; apply it to CLS and proxies alike.
        if hasattr(base, "post_layernorm") and self.model_type.startswith("clip"):
            cls, proxies = base.post_layernorm(cls), base.post_layernorm(proxies)
        return cls, proxies

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = dict(inputs)
        frames = None
        if self.kind == "video":
            pixels = inputs["pixel_values"]
            frames = pixels.shape[1]
            inputs["pixel_values"] = pixels.flatten(0, 1)
        if self.num_proxies and "attention_mask" in inputs:
            mask = inputs["attention_mask"]
            inputs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], self.num_proxies), mask], dim=1)
        hidden = self.backbone(**inputs).last_hidden_state
        cls, proxies = self._read_tokens(hidden)
        if frames is not None:
            cls = cls.unflatten(0, (-1, frames)).mean(1)
            proxies = proxies.unflatten(0, (-1, frames)).mean(1)
        return cls, proxies
