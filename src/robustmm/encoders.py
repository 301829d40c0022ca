"""A frozen pretrained `transformers` encoder with a peft adapter, and the extensions methods attach to it.

No model file is forked. A method extends an encoder in three ways, all through hooks:
- **prefix tokens** (`add_prefix`): inserted after the embedding layer, `[CLS, T]` -> `[P_1 .. P_k, CLS, T]`
  (CMPT's proxies, paper eq. 2; MAP's and REP's first-layer prompts). They get no position embedding, which the
  embedding layer has already added to the other tokens.
- **layer edits** (`add_layer_edit`): a function of the hidden states entering a chosen layer (deep prompts that
  replace the prefix slots, REP's replay), or tokens inserted there (`insert_tokens`: MAP's prompts, kept for
  the following layers or dropped after that layer).
- **per-layer outputs**: `forward(..., output_hidden_states=True)`.
Each call receives an `EncoderContext`, the availability pattern of each row, so that prompts can be chosen per
sample. The attention mask is extended for every inserted token at the layer it enters.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn as nn
from huggingface_hub.utils import HFValidationError, validate_repo_id
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoConfig, AutoModel

from .adapters import AdapterConfig, attach_adapter
from .availability import pattern_index
from .checks import check_field_types, with_current_names
from .processing import KINDS, MAX_PIXELS, PROCESSORS

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

POOLING_BY_MODEL_TYPE = {
    "clip_text_model": "end_token",
    "siglip_text_model": "last_token_head",
    "siglip": "sequence_pooler",
    "siglip_vision_model": "sequence_pooler",
    "beit": "sequence_pooler",
    "audio-spectrogram-transformer": "class_and_distillation",
    "deit": "class_and_distillation",
}
"""How each family pools its last layer into the class feature, read after the tokens methods insert in front:
- `end_token`: CLIP's text tower, at its end-of-text token (CLIP's `pooler_output`; a causal tower's first token
  never sees the text).
- `last_token_head`: SigLIP's text tower, its head on the last position (SigLIP's `pooler_output`).
- `sequence_pooler`: the family's pooling module over the sequence (SigLIP vision: its attention-pooling head;
  BEiT: the LayerNorm of the mean patch token), as its `pooler_output`.
- `class_and_distillation`: the mean of the class and distillation tokens (AST's `pooler_output`; DeiT's
  classifier with teacher averages the two tokens' predictions).
- `cls` (every other family): the class token's final state, through CLIP's vision tower's final norm there
  (CLIP's `pooler_output`). BERT-style models and ViT have a pooler
  (dense + tanh) that BERT pretrained for next-sentence prediction and that the classifiers of ViT do not use;
  CMPT reads the class token itself, so the pooler is left out. Dinov2's `pooler_output` is this token."""

TOWERS = {"text": "text_model", "image": "vision_model", "video": "vision_model"}
"""Attribute of the tower to keep when a dual-encoder checkpoint (CLIP, SigLIP) is loaded for one modality."""


@dataclass
class EncoderConfig:
    """Which pretrained encoder reads one modality, and how its inputs are prepared."""

    name_or_path: str
    kind: Literal["text", "image", "audio", "video"] | None = None
    """text / image / audio / video; inferred from the modality key or the model family when left out."""
    max_length: int | None = None
    """Text: maximum tokens (paper: 40 for Food-101, 256 for MM-IMDb); None takes the tokenizer's limit, at most 512."""
    num_frames: int = 3
    """Video: frames encoded per clip; their CLS and proxy outputs are averaged (paper: 3)."""
    target_modules: str | list[str] | None = None
    """Adapter targets; None means the query, key, value and attention-output projections of every layer."""
    max_pixels: int = MAX_PIXELS
    """Image and video: image files with more pixels than this are refused before they are decoded (64 M)."""
    keep_backbone_dropout: bool = False
    """Keep the pretrained model's own dropout (BERT: 0.1) active in training. Off by default, a choice the paper
    leaves open: the encoder is frozen, so its dropout would only add noise to the features that the adapters
    and the head learn from; the adapters keep their own dropout (paper: 0.1) either way."""

    RENAMED: ClassVar[dict[str, str]] = {"dropout": "keep_backbone_dropout"}
    """Former field names (old -> new), still read from older run configs and saved models."""

    @classmethod
    def from_dict(cls, given: dict) -> "EncoderConfig":
        """From a mapping of its fields, former names included (`RENAMED`)."""
        return cls(**with_current_names(given, cls.RENAMED, "encoder"))

    def __post_init__(self):
        if isinstance(self.name_or_path, os.PathLike):
            self.name_or_path = os.fspath(self.name_or_path)
        check_field_types(self, "encoder ")
        if self.num_frames < 1 or self.max_pixels < 1 or (self.max_length is not None and self.max_length < 1):
            raise ValueError(f"encoder num_frames, max_pixels and max_length must be >= 1, got {self.num_frames}, "
                             f"{self.max_pixels}, {self.max_length}")
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
        options = {"text": {"max_length": self.max_length}, "image": {"max_pixels": self.max_pixels},
                   "video": {"num_frames": self.num_frames, "max_pixels": self.max_pixels}}
        return PROCESSORS[kind](self.name_or_path, **options.get(kind, {}))


def load_backbone(name_or_path: str, kind: str) -> nn.Module:
    """`AutoModel.from_pretrained`, keeping only the relevant tower of a dual-encoder checkpoint."""
    model = AutoModel.from_pretrained(name_or_path, dtype=torch.float32)
    tower = TOWERS.get(kind)
    if tower and hasattr(model, tower) and not hasattr(model, "embeddings"):
        model = getattr(model, tower)
    if not hasattr(model, "embeddings"):
        raise ValueError(f"{name_or_path}: {type(model).__name__} has no `embeddings` module to insert tokens after")
    return model


@dataclass
class EncoderContext:
    """What the model tells an encoder about the rows it encodes: each row's visible modalities (its pattern)."""

    visible: dict[str, torch.Tensor]
    """Modality -> [n] bools: which modalities the row's sample shows to the model in this pass."""

    def __len__(self) -> int:
        return len(next(iter(self.visible.values())))

    def rows(self, keep: torch.Tensor) -> "EncoderContext":
        return EncoderContext({m: a[keep] for m, a in self.visible.items()})

    def repeat(self, times: int) -> "EncoderContext":
        """Each row `times` times in a row (video: one row per frame)."""
        return EncoderContext({m: a.repeat_interleave(times) for m, a in self.visible.items()})

    def pattern_index(self, modalities: list[str]) -> torch.Tensor:
        """[n] indices into `availability.patterns(modalities)` (`availability.pattern_index`)."""
        return pattern_index(self.visible, modalities)


TokenProvider = Callable[[EncoderContext], torch.Tensor]
"""(context) -> [n, k, d] tokens, one set per row."""
LayerEdit = Callable[[torch.Tensor, EncoderContext], torch.Tensor]
"""(hidden states [n, T, d] entering a layer, context) -> hidden states of the same shape."""


@dataclass
class TokenSegment:
    name: str
    count: int
    provider: TokenProvider
    keep: bool = True
    """Inserted tokens only: kept for the following layers, or removed after the layer they enter."""


@dataclass
class EncoderOutput:
    cls: torch.Tensor
    """[n, d]: the class token's final output (SigLIP: its pooling head)."""
    prefix: dict[str, torch.Tensor] = field(default_factory=dict)
    """Name -> [n, k, d]: the final outputs of each kept token segment (CMPT's proxies)."""
    hidden_states: tuple[torch.Tensor, ...] | None = None
    """With `output_hidden_states`: what enters the first layer (the embedding output with any tokens inserted at
    layer 0), then every layer's output; [n, T_l, d] each."""


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of a `transformers` encoder: its first `ModuleList` of `num_hidden_layers`
    modules (`encoder.layer` in BERT, `layers` in ViT, `encoder.layers` in CLIP)."""
    depth = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(f"{type(model).__name__} has no list of {depth} layers to attach layer hooks to")


def end_token_index(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """[n] positions of each text's end-of-text token, found as CLIP's text model finds it for `pooler_output`."""
    ids = inputs["input_ids"].to(torch.int)
    eos = model.config.eos_token_id
    return ids.argmax(-1) if eos == 2 else (ids == eos).int().argmax(-1)


def pad_attention_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """A layer's 4-D mask [B, 1, Q, K] widened in front to `length` keys, for tokens inserted at that layer: every
    query attends to them. A mask with a row per query gets rows for them too, copied from the first token's
    (the class token's: it sees every real token and no padding)."""
    if mask is None or mask.dim() != 4 or mask.shape[-1] >= length:
        return mask
    extra = length - mask.shape[-1]
    if mask.shape[-2] == mask.shape[-1] and mask.shape[-2] > 1:
        mask = torch.cat([mask[:, :, :1].expand(-1, -1, extra, -1), mask], dim=-2)
    attend = True if mask.dtype == torch.bool else 0.0
    return torch.cat([mask.new_full((*mask.shape[:3], extra), attend), mask], dim=-1)


class ModalityEncoder(nn.Module):
    """Encodes one modality: the final CLS feature plus what the method's extensions ask for."""

    def __init__(self, modality: str, config: EncoderConfig, adapter: AdapterConfig, train_backbone=()):
        super().__init__()
        self.modality = modality
        self.kind = config.resolve_kind(modality)
        backbone = load_backbone(config.name_or_path, self.kind)
        self.model_type = backbone.config.model_type
        self.hidden_size = backbone.config.hidden_size
        self.pooling = POOLING_BY_MODEL_TYPE.get(self.model_type, "cls")
        self.backbone = attach_adapter(backbone, adapter, config.target_modules, name=modality)
        self.trained_backbone = self._train_backbone_modules(train_backbone)
        """Names (in the model's `named_parameters`) of the backbone parameters trained by `train_backbone`."""
        self.prefixes: list[TokenSegment] = []
        self.layer_edits: dict[int, list[LayerEdit]] = {}
        self.insertions: dict[int, list[TokenSegment]] = {}
        self._context: EncoderContext | None = None
        self._segments: list[tuple[str, int]] = []  # (name, count) of the tokens in front of CLS, front first
        base = self.backbone.get_base_model()
        base.embeddings.register_forward_hook(self._insert_prefix)
        for index, layer in enumerate(encoder_layers(base)):
            layer.register_forward_pre_hook(self._enter_layer(index), with_kwargs=True)
            layer.register_forward_hook(self._leave_layer(index))
        self.keep_backbone_dropout = config.keep_backbone_dropout
        self.train()

    def _train_backbone_modules(self, names) -> set[str]:
        """Unfreeze the backbone modules called `names` (a full name, or its last parts); return the names of their
        parameters in this module's `named_parameters`, for the counts."""
        unfrozen = set()
        for module_name, module in self.backbone.get_base_model().named_modules():
            if any(module_name == n or module_name.endswith("." + n) for n in names):
                for parameter in module.parameters():
                    parameter.requires_grad_(True)
                    unfrozen.add(id(parameter))
        return {name for name, parameter in self.named_parameters() if id(parameter) in unfrozen}

    # ----- extensions ------------------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return len(encoder_layers(self.backbone.get_base_model()))

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens in front of CLS at the embedding output (those of `add_prefix`)."""
        return sum(s.count for s in self.prefixes)

    def add_prefix(self, name: str, count: int, provider: TokenProvider) -> None:
        """Insert `count` tokens per row after the embedding layer, in front of those added before."""
        self.prefixes.append(TokenSegment(name, count, provider))

    def add_layer_edit(self, layer: int, edit: LayerEdit) -> None:
        """Apply `edit` to the hidden states entering `layer` (0-based; 0 sees the embedding output)."""
        self._check_layer(layer)
        self.layer_edits.setdefault(layer, []).append(edit)

    def insert_tokens(self, layer: int, name: str, count: int, provider: TokenProvider, keep: bool = True) -> None:
        """Insert `count` tokens per row in front of the hidden states entering `layer`; `keep=False` removes
        them after that layer, so they only serve as keys and values of its attention."""
        self._check_layer(layer)
        self.insertions.setdefault(layer, []).append(TokenSegment(name, count, provider, keep))

    def token_slice(self, name: str) -> slice:
        """Where the segment `name` sits in the hidden states at this point of the current call."""
        start = 0
        for segment, count in self._segments:
            if segment == name:
                return slice(start, start + count)
            start += count
        raise KeyError(f"{self.modality}: no token segment {name!r} at this point; have {self._segments}")

    @property
    def token_segments(self) -> list[tuple[str, int]]:
        """(name, count) of the segments in front of CLS at this point of the current call, front first."""
        return list(self._segments)

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"{self.modality}: layer {layer} does not exist; the encoder has {self.num_layers}")

    def _tokens(self, segment: TokenSegment, like: torch.Tensor) -> torch.Tensor:
        tokens = segment.provider(self._context).to(like.dtype)
        if tokens.shape != (like.shape[0], segment.count, like.shape[-1]):
            raise ValueError(
                f"{self.modality}: token segment {segment.name!r} gave shape {list(tokens.shape)}, expected "
                f"{[like.shape[0], segment.count, like.shape[-1]]}"
            )
        return tokens

    def _insert_prefix(self, module, args, embeddings: torch.Tensor) -> torch.Tensor:
        for segment in self.prefixes:
            embeddings = torch.cat([self._tokens(segment, embeddings), embeddings], dim=1)
            self._segments.insert(0, (segment.name, segment.count))
        return embeddings

    def _enter_layer(self, index: int):
        def hook(module, args, kwargs):
            edits, insertions = self.layer_edits.get(index, ()), self.insertions.get(index, ())
            if not edits and not insertions and not self._inserted_before(index):
                return None
            in_args = bool(args)
            hidden = args[0] if in_args else kwargs["hidden_states"]
            for edit in edits:
                hidden = edit(hidden, self._context)
            for segment in sorted(insertions, key=lambda s: not s.keep):  # temporary ones last: in front
                hidden = torch.cat([self._tokens(segment, hidden), hidden], dim=1)
                self._segments.insert(0, (segment.name, segment.count))
            args = (hidden, *args[1:]) if in_args else args
            if not in_args:
                kwargs = {**kwargs, "hidden_states": hidden}
            if len(args) > 1 and isinstance(args[1], torch.Tensor):
                args = (args[0], pad_attention_mask(args[1], hidden.shape[1]), *args[2:])
            elif kwargs.get("attention_mask") is not None:
                kwargs = {**kwargs, "attention_mask": pad_attention_mask(kwargs["attention_mask"], hidden.shape[1])}
            return args, kwargs

        return hook

    def _inserted_before(self, index: int) -> bool:
        """Whether tokens kept from an earlier layer's insertion make the hidden states longer than the mask."""
        return any(s.keep for layer, segments in self.insertions.items() if layer < index for s in segments)

    def _leave_layer(self, index: int):
        def hook(module, args, output):
            dropped = sum(s.count for s in self.insertions.get(index, ()) if not s.keep)
            if not dropped:
                return None
            for segment in self.insertions[index]:
                if not segment.keep:
                    self._segments.remove((segment.name, segment.count))
            if isinstance(output, tuple):
                return (output[0][:, dropped:], *output[1:])
            return output[:, dropped:]

        return hook

    # ----- encoding --------------------------------------------------------------------------------------------

    def train(self, mode: bool = True) -> "ModalityEncoder":
        """Unless `EncoderConfig.keep_backbone_dropout`, the frozen encoder's own modules stay in eval mode (no dropout) while
        its adapter layers, and so their dropout, follow `mode`."""
        super().train(mode)
        if not self.keep_backbone_dropout:
            self.backbone.eval()
            for layer in self.backbone.modules():
                if isinstance(layer, BaseTunerLayer):
                    layer.train(mode)
        return self

    def _read_tokens(self, hidden: torch.Tensor, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Split the last layer into the class feature [n, d] (`POOLING_BY_MODEL_TYPE`) and the kept token
        segments."""
        base = self.backbone.get_base_model()
        k = sum(count for _, count in self._segments)
        front, sequence = hidden[:, :k], hidden[:, k:]
        if self.pooling == "end_token":
            cls = sequence[torch.arange(len(sequence), device=sequence.device), end_token_index(base, inputs)]
        elif self.pooling == "last_token_head":
            cls = base.head(sequence[:, -1])
        elif self.pooling == "sequence_pooler":
            cls = (base.head if hasattr(base, "head") else base.pooler)(sequence)
        elif self.pooling == "class_and_distillation":
            cls = (sequence[:, 0] + sequence[:, 1]) / 2
        else:
            cls = sequence[:, 0]
            # CLIP's vision tower leaves its final norm to the pooled token; apply it to CLS and prefix alike.
            if hasattr(base, "post_layernorm") and self.model_type.startswith("clip"):
                cls, front = base.post_layernorm(cls), base.post_layernorm(front)
        prefix, start = {}, 0
        for name, count in self._segments:
            prefix[name] = front[:, start : start + count]
            start += count
        return cls, prefix

    def forward(
        self, inputs: dict[str, torch.Tensor], context: EncoderContext | None = None, output_hidden_states=False
    ) -> EncoderOutput:
        inputs = dict(inputs)
        rows = len(next(iter(inputs.values())))
        if context is None:
            context = EncoderContext({self.modality: torch.ones(rows, dtype=torch.bool)})
        frames = None
        if self.kind == "video":
            pixels = inputs["pixel_values"]
            frames = pixels.shape[1]
            inputs["pixel_values"] = pixels.flatten(0, 1)
            context = context.repeat(frames)
        if self.num_prefix_tokens and "attention_mask" in inputs:
            mask = inputs["attention_mask"]
            inputs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], self.num_prefix_tokens), mask], dim=1)
        self._context, self._segments = context, []
        try:
            result = self.backbone(**inputs, output_hidden_states=output_hidden_states)
            cls, prefix = self._read_tokens(result.last_hidden_state, inputs)
        finally:
            self._context = None
        hidden_states = tuple(result.hidden_states) if output_hidden_states else None
        if frames is not None:
            cls = cls.unflatten(0, (-1, frames)).mean(1)
            prefix = {name: tokens.unflatten(0, (-1, frames)).mean(1) for name, tokens in prefix.items()}
            if hidden_states is not None:
                hidden_states = tuple(h.unflatten(0, (-1, frames)).mean(1) for h in hidden_states)
        return EncoderOutput(cls, prefix, hidden_states)
