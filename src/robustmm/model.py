"""The shared late-fusion model: one adapted encoder per named modality, a fusion rule and a linear head.

Every method (`robustmm.methods`) is a subclass that says how missing modalities are filled in (`encode`,
`fuse`) and what it adds to the loss (`auxiliary_loss`); batching, modality dropout, losses, prediction, saving
and loading live here once.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes

from .adapters import AdapterConfig
from .atomic import atomic_write, atomic_write_text
from .encoders import EncoderConfig, ModalityEncoder
from .processing import Batch, Collator

MODALITY_DROPOUT = ("none", "leave_one_out", "subsets")
FUSION_NORMS = ("none", "layernorm")
ADAPTER_SHORTHANDS = ("adapter", "rank", "alpha", "adapter_dropout")
"""Options of every method besides its config's fields: they make its `AdapterConfig`."""
CONFIG_FILE = "robustmm_config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class ModelConfig:
    """Options every method shares. Method configs subclass this and add their own fields."""

    encoders: dict[str, EncoderConfig]
    num_classes: int
    multilabel: bool = False
    class_names: list[str] | None = None
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    modality_dropout: str = "none"
    """Training-time modality dropout. `leave_one_out` (the paper's): each draw keeps all modalities or drops
    exactly one, uniformly; `subsets`: keeps a uniformly drawn non-empty subset. A sample's only present modality
    is never dropped."""
    modality_dropout_level: str = "batch"
    """`batch`: one draw per training step, as the paper ("in each iteration"); `sample`: one draw per sample."""
    seed: int = 0
    """Initial values of proxies and head, and the modality-dropout stream."""
    fusion_norm: str = "none"
    """`none` (the paper's plain sum) or `layernorm`: each encoder's class and proxy outputs are normalized to zero
    mean and unit variance over the features (no learned scale) before fusion and the alignment loss. Use it when
    the encoders' features differ in scale (e.g. an encoder that ends without a LayerNorm next to one that ends
    with it): additive fusion otherwise hears the larger one louder. Real ViT-B and BERT-base both end in
    LayerNorm, the situation of the paper."""

    def __post_init__(self):
        self.encoders = {
            m: e if isinstance(e, EncoderConfig) else EncoderConfig(**e) if isinstance(e, dict) else EncoderConfig(e)
            for m, e in self.encoders.items()
        }
        if isinstance(self.adapter, dict):
            self.adapter = AdapterConfig(**self.adapter)
        if not self.encoders:
            raise ValueError("at least one encoder is needed")
        fewest = 1 if self.multilabel else 2
        if self.num_classes < fewest:
            raise ValueError(f"num_classes={self.num_classes}: this task needs at least {fewest} classes")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names given for {self.num_classes} classes")
        if self.modality_dropout not in MODALITY_DROPOUT:
            raise ValueError(f"modality_dropout must be one of {MODALITY_DROPOUT}, got {self.modality_dropout!r}")
        if self.fusion_norm not in FUSION_NORMS:
            raise ValueError(f"fusion_norm must be one of {', '.join(FUSION_NORMS)}, got {self.fusion_norm!r}")
        if self.modality_dropout_level not in ("batch", "sample"):
            raise ValueError(f"modality_dropout_level must be 'batch' or 'sample', got {self.modality_dropout_level!r}")

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelOutput:
    """What a forward pass returns. Rows of samples that lack a modality are zero in `cls` and `proxies`."""

    logits: torch.Tensor
    fused: torch.Tensor
    cls: dict[str, torch.Tensor]
    proxies: dict[tuple[str, str], torch.Tensor]
    present: dict[str, torch.Tensor]
    """Which modalities each sample truly has."""
    visible: dict[str, torch.Tensor]
    """Which modalities the fusion used: `present` minus those dropped by training-time modality dropout."""
    align_loss: torch.Tensor
    task_loss: torch.Tensor | None = None
    loss: torch.Tensor | None = None


def scatter_rows(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place `rows` (one per True in `mask`) into a zero tensor with one row per sample."""
    full = rows.new_zeros((mask.shape[0], *rows.shape[1:]))
    full[mask] = rows
    return full


def select_rows(inputs: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[keep] for k, v in inputs.items()}


class MultimodalModel(nn.Module):
    """Late fusion over a `ModuleDict` of adapted encoders, with a linear head on the fused feature."""

    method: str = ""
    config_class: type[ModelConfig] = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        kinds = {m: e.resolve_kind(m) for m, e in config.encoders.items()}
        self.collator = Collator(
            {m: config.encoders[m].processor(kinds[m]) for m in config.modalities}, config.num_classes, config.multilabel
        )
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.encoders = nn.ModuleDict(
                {
                    m: ModalityEncoder(m, e, config.adapter, num_proxies=self.num_proxies(m))
                    for m, e in config.encoders.items()
                }
            )
            sizes = {m: e.hidden_size for m, e in self.encoders.items()}
            if len(set(sizes.values())) != 1:
                raise ValueError(
                    f"additive fusion needs encoders of one hidden size, got {sizes}; choose encoders that match"
                )
            self.hidden_size = next(iter(sizes.values()))
            self.head = nn.Linear(self.hidden_size, config.num_classes)
        self.dropout_rng = random.Random(config.seed)
        self._placeholder_inputs: dict[str, dict[str, torch.Tensor]] = {}

    # ----- what a method decides -------------------------------------------------------------------------------

    def num_proxies(self, modality: str) -> int:
        """How many proxy tokens the encoder of `modality` carries (none unless a method says otherwise)."""
        return 0

    def encode(self, batch: Batch, visible: dict[str, torch.Tensor]):
        """Per-modality features: returns (cls: m -> [B, d], proxies: (m, n) -> [B, d])."""
        raise NotImplementedError

    def fuse(self, cls, proxies, visible) -> torch.Tensor:
        raise NotImplementedError

    def auxiliary_loss(self, cls, proxies, present) -> torch.Tensor:
        return self.head.weight.new_zeros(())

    @property
    def auxiliary_weight(self) -> float:
        """Weight of `auxiliary_loss` in the total loss (lambda of paper eq. 7 for CMPT)."""
        return 0.0

    # ----- shared machinery ------------------------------------------------------------------------------------

    @property
    def modalities(self) -> list[str]:
        return self.config.modalities

    def collate(self, samples: list[dict]) -> Batch:
        return self.collator(samples)

    def encode_present(self, batch: Batch, modality: str, keep: torch.Tensor):
        """Run the encoder of `modality` on the samples in `keep` (a subset of those that have it) only.

        Returns (cls [B, d], proxies [B, k, d]) with zero rows elsewhere, or None when no sample is kept.
        """
        present = batch.present[modality]
        keep = keep & present
        if not keep.any():
            return None
        inputs = batch.inputs[modality]
        if not torch.equal(keep, present):
            inputs = select_rows(inputs, keep[present])
        cls, proxies = self.encoders[modality](inputs)
        return scatter_rows(self.fusion_normalize(cls), keep), scatter_rows(self.fusion_normalize(proxies), keep)

    def placeholder_inputs(self, modality: str) -> dict[str, torch.Tensor]:
        """The processed input that stands in for a missing `modality` (a batch of one): by default the
        processor's placeholder (empty text, black image, silence); methods may choose another."""
        return self.collator.placeholder(modality)

    def encode_placeholder(self, modality: str, device: torch.device) -> torch.Tensor:
        """CLS feature of the modality's placeholder input, computed once per call and shared by all samples."""
        if modality not in self._placeholder_inputs:
            self._placeholder_inputs[modality] = self.placeholder_inputs(modality)
        inputs = {k: v.to(device) for k, v in self._placeholder_inputs[modality].items()}
        cls, _ = self.encoders[modality](inputs)
        return self.fusion_normalize(cls)[0]

    def fusion_normalize(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder outputs as fusion sees them (`ModelConfig.fusion_norm`)."""
        if self.config.fusion_norm == "layernorm":
            return F.layer_norm(features, features.shape[-1:])
        return features

    def drop_modalities(self, present: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training-time modality dropout over the truly present modalities; never leaves a sample empty."""
        if self.config.modality_dropout == "none" or len(self.modalities) < 2:
            return present
        names = self.modalities
        if self.config.modality_dropout == "leave_one_out":
            patterns = [set(names)] + [set(names) - {m} for m in names]
        else:
            patterns = [set(c) for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]
        size = len(next(iter(present.values())))
        draws = 1 if self.config.modality_dropout_level == "batch" else size
        chosen = [self.dropout_rng.choice(patterns) for _ in range(draws)]
        device = next(iter(present.values())).device
        keep = {m: torch.tensor([m in c for c in chosen], device=device).expand(size) for m in names}
        visible = {m: present[m] & keep[m] for m in names}
        # A sample whose kept modalities are all absent keeps what it truly has.
        empty = ~torch.stack(list(visible.values())).any(0)
        return {m: torch.where(empty, present[m], visible[m]) for m in names}

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.multilabel:
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        return F.cross_entropy(logits, labels)

    def forward(self, batch: Batch) -> ModelOutput:
        present = batch.present
        if not torch.stack(list(present.values())).any(0).all():
            empty = int((~torch.stack(list(present.values())).any(0)).nonzero()[0])
            raise ValueError(f"sample {empty} (id {batch.ids[empty]!r}) has no modality at all")
        visible = self.drop_modalities(present) if self.training else present
        cls, proxies = self.encode(batch, visible)
        fused = self.fuse(cls, proxies, visible)
        logits = self.head(fused)
        align_loss = self.auxiliary_loss(cls, proxies, present)
        output = ModelOutput(logits, fused, cls, proxies, present, visible, align_loss)
        if batch.labels is not None:
            output.task_loss = self.task_loss(logits, batch.labels)
            output.loss = output.task_loss + self.auxiliary_weight * align_loss
        return output

    @torch.no_grad()
    def logits_by_availability(
        self, batch: Batch, scenarios: dict[str, dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Logits of `batch` under each scenario (name -> modality -> [B] bools: what each sample may show),
        encoding each modality of each sample once for all of them.

        Every method here encodes a modality without looking at the others, so only the fusion depends on which
        modalities a sample has: scoring many scenarios of one test set costs one encoding pass, not one each.
        A modality that a sample lacks stays missing whatever the scenario says.
        """
        present = batch.present
        cls, proxies = self.encode(batch, present)
        logits = {}
        for name, shown in scenarios.items():
            visible = {m: p & shown[m] for m, p in present.items()}
            empty = ~torch.stack(list(visible.values())).any(0)
            if empty.any():
                first = int(empty.nonzero()[0])
                raise ValueError(f"scenario {name!r} leaves sample {first} (id {batch.ids[first]!r}) no modality")
            logits[name] = self.head(self.fuse(cls, proxies, visible))
        return logits

    @torch.no_grad()
    def predict(self, samples: list[dict], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities (softmax, or per-class sigmoid for multi-label) for samples with any modalities:
        `[len(samples), num_classes]`, so `[0, num_classes]` for no samples. Labels in the samples are ignored;
        errors name a sample by its position in `samples`."""
        if isinstance(samples, Mapping) or not isinstance(samples, (list, tuple)):
            raise ValueError(f"predict takes a list of samples (dicts), got a {type(samples).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not samples:
            return torch.empty(0, self.config.num_classes)
        was_training = self.training
        self.eval()
        device = self.head.weight.device
        try:
            chunks = []
            for start in range(0, len(samples), batch_size):
                chunk = [
                    {k: v for k, v in s.items() if k != "label"} if isinstance(s, Mapping) else s
                    for s in samples[start : start + batch_size]
                ]
                logits = self(self.collator(chunk, first_index=start).to(device)).logits
                chunks.append(torch.sigmoid(logits) if self.config.multilabel else logits.softmax(-1))
            return torch.cat(chunks).cpu()
        finally:
            self.train(was_training)

    # ----- parameters, saving, loading -------------------------------------------------------------------------

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part: adapters of each encoder, proxy tokens, head, and the total."""
        counts: dict[str, int] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            if name.startswith("encoders."):
                modality = name.split(".")[1]
                part = "proxies" if name.endswith("proxy_tokens") else f"adapters.{modality}"
            else:
                part = name.split(".")[0]
            counts[part] = counts.get(part, 0) + parameter.numel()
        counts["total_trainable"] = sum(counts.values())
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    def print_trainable_parameters(self) -> None:
        counts = self.trainable_parameter_counts()
        width = max(map(len, counts))
        for part, count in counts.items():
            print(f"{part:<{width}}  {count:>12,}")

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Adapters, proxies and head: everything that training changes (the frozen encoders are not stored)."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {n: t.detach().cpu().contiguous() for n, t in self.state_dict().items() if n in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `trainable_state_dict` saved; names and shapes are checked first, so that weights of another
        model are reported by the first tensor that does not fit rather than by PyTorch's list of all of them."""
        expected = self.trainable_state_dict()
        missing, unexpected = set(expected) - set(state), set(state) - set(expected)
        if missing or unexpected:
            raise ValueError(
                f"weights do not fit this model: missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        for name, tensor in expected.items():
            if state[name].shape != tensor.shape:
                raise ValueError(
                    f"weights do not fit this model: {name} has shape {list(state[name].shape)}, "
                    f"the model expects {list(tensor.shape)}"
                )
        self.load_state_dict(state, strict=False)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the config (JSON) and the trained weights (safetensors) atomically into `directory`. The weights
        (the trainable state only, small) are serialized in memory and written by Python, so that a failed write
        reports the OS error (`atomic_write`), which safetensors' own file writer turns into text."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"method": self.method, **self.config.to_dict()}
        weights = safetensors_bytes(self.trainable_state_dict(), metadata={"method": self.method})
        atomic_write(directory / WEIGHTS_FILE, lambda p: Path(p).write_bytes(weights))
        atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2))

    @classmethod
    def config_from_kwargs(cls, encoders, num_classes, **options) -> ModelConfig:
        names = {f.name for f in fields(cls.config_class)}
        adapter_options = {k: options.pop(k) for k in ADAPTER_SHORTHANDS[1:] if k in options}
        if isinstance(options.get("adapter"), str):
            adapter_options["kind"] = options.pop("adapter")
        if "adapter_dropout" in adapter_options:
            adapter_options["dropout"] = adapter_options.pop("adapter_dropout")
        if adapter_options:
            options["adapter"] = AdapterConfig(**adapter_options)
        unknown = set(options) - names
        if unknown:
            raise TypeError(
                f"method {cls.method!r} has no option {', '.join(sorted(unknown))}; "
                f"its options are {', '.join(sorted(names - {'encoders', 'num_classes'}))}, {', '.join(ADAPTER_SHORTHANDS[1:])}"
            )
        return cls.config_class(encoders=encoders, num_classes=num_classes, **options)
