"""The method contract: one adapted encoder per named modality, a fusion and a linear head.

A method (`robustmm.methods`, one file each) is a subclass that says
- what it adds to the encoders and the model (`build`: prefix tokens, layer hooks, its own modules),
- how each modality is encoded (`encode` -> `Features`) and how the features are fused (`fuse`: by default the
  fusion module the config names, `robustmm.fusions`, which also sizes the head),
- what it adds to the loss (`auxiliary_losses`: named, weighted),
- and, if it needs them, training hooks (`param_groups`, `on_fit_start`, `on_after_backward`,
  `on_train_batch_end`) and state that is not a parameter (persistent buffers, saved with the weights).
A plug-in (`Plugin`, e.g. MWAM) adds losses and hooks to any method. Batching, modality dropout, the task loss,
scenario evaluation and prediction live here once; the keyword options in `robustmm.options`, saving and loading
in `robustmm.serialisation`.

Glossary (`robustmm.availability`):
- **present**: what the data has: a modality is present in a sample when its input exists. `Batch.present`,
  modality -> [B] bools.
- **visible**: what the model is shown in this pass: `present` minus what training-time modality dropout or an
  evaluation scenario withholds. `encode` and `fuse` get `visible`; a modality that is not present is never
  visible. `auxiliary_losses` gets both as one `Availability`, in a method and a plug-in alike.
- **scenario**: a rule for what to show at evaluation (`complete`, `image missing`, a missing protocol's table),
  applied to every test sample: visible = present & the scenario's mask.
- **pattern**: a set of modalities, a tuple in the model's order such as `("image", "text")`; named by joining
  with "+" (`"image+text"`, the keys of calibration.json and of the report's tables), indexed by its position in
  `availability.patterns(modalities)`, largest first (index 0 is the complete pattern; MAP's prompt pool and
  REP's pattern embedding are indexed so).
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import options as keyword_options
from . import serialisation
from .adapters import AdapterConfig
from .availability import Availability
from .checks import check_field_types
from .encoders import EncoderConfig, EncoderContext, EncoderOutput, ModalityEncoder
from .processing import Batch, Collator
from .fusions import Fusion
from .registry import FUSIONS, PLUGINS

ModalityDropoutChoice = Literal["none", "leave_one_out", "subsets"]
"""The values of `ModelConfig.modality_dropout`, for method configs that change its default."""


@dataclass
class ModelConfig:
    """Options every method shares. Method configs subclass this and add their own fields."""

    encoders: dict[str, EncoderConfig]
    num_classes: int
    multilabel: bool = False
    """One sigmoid per class (a sample may have several labels, MM-IMDb's genres) instead of a softmax."""
    class_names: list[str] | None = None
    """The classes' names in label order, for reports and predictions."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    modality_dropout: ModalityDropoutChoice = "none"
    """Training-time modality dropout. `leave_one_out` (the paper's): each draw keeps all modalities or drops
    exactly one, uniformly; `subsets`: keeps a uniformly drawn non-empty subset. A sample's only present modality
    is never dropped."""
    modality_dropout_level: Literal["batch", "sample"] = "batch"
    """`batch`: one draw per training step, as the paper ("in each iteration"); `sample`: one draw per sample."""
    seed: int = 0
    """Initial values of proxies and head, and the modality-dropout stream."""
    fusion: str = "sum"
    """How the modalities' features become the head's input, on a method whose fusion is generic (its docstring
    says): `sum`, `concat`, `gated_mean`, `transformer` (`robustmm.fusions`) or one registered with
    `register_fusion`. Its options are `fusion_<option>`, e.g. `fusion_norm`."""
    fusion_options: dict = field(default_factory=dict)
    """The fusion's options, name -> value (as keyword options, `fusion_<option>=value`)."""
    module_lr_scale: float = 1.0
    """Learning rate of the method's own modules (prompts, proxies, generators, fusion blocks: every trainable
    parameter but the adapters, the head and plug-ins) relative to the run's, which suits low-rank adapters."""
    train_backbone: list[str] = field(default_factory=list)
    """Backbone modules trained besides the method's own and the adapters, by module name or its last parts
    (`post_layernorm`, `encoder.layer.11`), in every encoder that has one of that name (`trainable_parameter_counts`
    lists them as `backbone.<modality>`). REP's source trains CLIP's final norms this way."""
    plugins: dict[str, dict] = field(default_factory=dict)
    """Plug-ins on this method, name -> options (e.g. `{"mwam": {"mode": "hybrid"}}`); as keyword options,
    `mwam=True` and `mwam_<option>=value`."""

    def __post_init__(self):
        check_field_types(self)
        self.encoders = {m: encoder_config(m, e) for m, e in self.encoders.items()}
        if isinstance(self.adapter, dict):
            self.adapter = AdapterConfig.from_dict(self.adapter)
        if not self.encoders:
            raise ValueError("at least one encoder is needed")
        fewest = 1 if self.multilabel else 2
        if self.num_classes < fewest:
            raise ValueError(f"num_classes={self.num_classes}: this task needs at least {fewest} classes")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names given for {self.num_classes} classes")
        repeated = sorted({name for name in self.class_names or () if self.class_names.count(name) > 1})
        if repeated:
            raise ValueError(f"class_names must be distinct; repeated: {', '.join(map(repr, repeated))}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.module_lr_scale <= 0:
            raise ValueError(f"module_lr_scale must be > 0, got {self.module_lr_scale}")
        self.plugins = {
            name: asdict(PLUGINS.get(name).config_class(**dict(options or {})))
            for name, options in self.plugins.items()
        }
        self.fusion_options = checked_fusion_options(FUSIONS.get(self.fusion), self.fusion_options)

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def to_dict(self) -> dict:
        return asdict(self)


def checked_fusion_options(fusion_class: type, given: dict) -> dict:
    """A fusion's options, checked by its config and completed with its defaults; an unknown one names the
    fusion's options."""
    known = [f.name for f in fields(fusion_class.config_class)]
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"fusion {fusion_class.fusion!r} has no option {', '.join(f'fusion_{k}' for k in unknown)}; "
                         f"its options are {', '.join(f'fusion_{k}' for k in known)}")
    return asdict(fusion_class.config_class(**given))


def encoder_config(modality: str, given) -> EncoderConfig:
    """An `EncoderConfig` from a hub id, a path, a mapping of its fields or itself; errors name the modality."""
    if isinstance(given, EncoderConfig):
        return given
    try:
        return EncoderConfig.from_dict(given) if isinstance(given, dict) else EncoderConfig(given)
    except ValueError as error:
        raise ValueError(f"modality {modality!r}: {error}") from error


@dataclass
class Features:
    """What `encode` returns. Rows of samples that a modality was not encoded for are zero."""

    cls: dict[str, torch.Tensor]
    """Modality -> [B, d]: each encoder's class feature."""
    extras: dict[str, Any] = field(default_factory=dict)
    """What else the method's fusion and losses read, by name (CMPT: "proxies", (source, target) -> [B, d])."""


@dataclass
class ModelOutput:
    """What a forward pass returns."""

    logits: torch.Tensor
    fused: torch.Tensor
    features: Features
    availability: Availability
    """Which modalities each sample has (`present`) and which the model used (`visible`: `present` minus those
    dropped by training-time modality dropout)."""
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    """Auxiliary losses by name, unweighted (the logs show each as `train/<name>_loss`)."""
    loss_weights: dict[str, float] = field(default_factory=dict)
    task_loss: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    """task_loss + sum of weight * auxiliary loss."""


def scatter_rows(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place `rows` (one per True in `mask`) into a zero tensor with one row per sample."""
    full = rows.new_zeros((mask.shape[0], *rows.shape[1:]))
    full[mask] = rows
    return full


def select_rows(inputs: dict[str, torch.Tensor], keep: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[keep] for k, v in inputs.items()}


class TrainingHooks:
    """Hooks of the training loop, no-ops by default; methods and plug-ins override what they need."""

    def on_fit_start(self, train_samples) -> None:
        """Before the first step, with the training samples (e.g. to initialise statistics)."""

    def on_after_backward(self) -> None:
        """After the gradients are computed, before the optimizer steps (e.g. to edit gradients)."""

    def on_train_batch_end(self, output: "ModelOutput") -> None:
        """After each training step, with its output (e.g. to update feature banks)."""

    def on_before_optimizer_step(self, optimizer) -> None:
        """Once per optimizer step, after every micro-batch's backward pass, before the parameters change (e.g. to
        scale a parameter group's learning rate for this step)."""

    def on_after_optimizer_step(self, optimizer) -> None:
        """Once per optimizer step, after the parameters changed (e.g. to undo a per-step learning-rate scale)."""

    def training_logs(self) -> dict[str, float]:
        """Values to log after `on_before_optimizer_step`, as `train/<name>`."""
        return {}


class Plugin(TrainingHooks, nn.Module):
    """An addition to any method (`ModelConfig.plugins`): its own config class, losses and training hooks.
    It must not change the logits, so that the method's own evaluation holds."""

    plugin: str = ""
    config_class: type = object
    departures: tuple[str, ...] | None = None
    """As `MultimodalModel.departures`."""

    def __init__(self, model: "MultimodalModel", config):
        super().__init__()
        self.config = config
        object.__setattr__(self, "owner", model)  # a plain attribute, not a submodule: the model owns the plug-in

    def auxiliary_losses(
        self, features: Features, availability: Availability, batch: Batch
    ) -> dict[str, tuple[torch.Tensor, float]]:
        """As `MultimodalModel.auxiliary_losses`: name -> (loss, weight) added to the task loss."""
        return {}


class MultimodalModel(TrainingHooks, nn.Module):
    """Late fusion over a `ModuleDict` of adapted encoders, with a linear head on the fused feature."""

    method: str = ""
    config_class: type[ModelConfig] = ModelConfig
    departures: tuple[str, ...] | None = None
    """Where the method's defaults depart from its source, each with the option that restores the source's
    setting (`robustmm methods --options` prints them); None for a method without a source."""
    encodes_by_availability: bool = False
    """True where a modality's encoding depends on which other modalities the sample has (MAP's and REP's
    prompts): scenario evaluation then runs one forward pass per scenario instead of one encoding pass for all."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        kinds = {m: e.resolve_kind(m) for m, e in config.encoders.items()}
        self.collator = Collator(
            {m: config.encoders[m].processor(kinds[m]) for m in config.modalities},
            config.num_classes,
            config.multilabel,
        )
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.encoders = nn.ModuleDict(
                {m: ModalityEncoder(m, e, config.adapter, config.train_backbone) for m, e in config.encoders.items()}
            )
            self.hidden_sizes = {m: e.hidden_size for m, e in self.encoders.items()}
            self.build()
            if "fusion" not in self._modules:  # a method may build its fusion in `build` (MoLT, with its tokens)
                self.fusion = self.build_fusion()
            self.head = self.build_head()
            self.plugins = nn.ModuleDict(
                {
                    name: PLUGINS.get(name)(self, PLUGINS.get(name).config_class(**options))
                    for name, options in config.plugins.items()
                }
            )
        self.dropout_rng = random.Random(config.seed)
        self._placeholder_inputs: dict[str, dict[str, torch.Tensor]] = {}

    # ----- what a method decides -------------------------------------------------------------------------------

    def build(self) -> None:
        """Add the method's modules and encoder extensions (`ModalityEncoder.add_prefix`, `add_layer_edit`,
        `insert_tokens`). Runs under the config's seed, after the encoders and before the head."""

    def build_head(self) -> nn.Module:
        """The classifier on the fused feature: one linear layer unless the method's source builds another."""
        return nn.Linear(self.fused_size(), self.config.num_classes)

    def build_fusion(self, **arguments) -> Fusion:
        """The fusion the config names (`ModelConfig.fusion`, with `fusion_options`) over the encoders' widths;
        `arguments` go to its constructor (MoLT's width and added tokens). Runs after `build`, unless `build` has
        set `self.fusion` itself."""
        fusion_class = FUSIONS.get(self.config.fusion)
        return fusion_class(self.hidden_sizes, fusion_class.config_class(**self.config.fusion_options), **arguments)

    def fused_size(self) -> int:
        """Width of the fused feature, the head's input: the fusion's."""
        return self.fusion.out_features

    def encode(self, batch: Batch, visible: dict[str, torch.Tensor]) -> Features:
        """Per-modality features. By default each encoder runs on the samples that show its modality."""
        cls = {}
        for modality in self.modalities:
            encoded = self.encode_present(batch, modality, visible[modality], visible)
            cls[modality] = encoded.cls if encoded else self.zeros(len(batch), self.hidden_sizes[modality])
        return Features(cls)

    def fuse(self, features: Features, visible: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused feature [B, fused_size]: by default the fusion of the class features, those of a modality
        not visible being zero and not visible to the fusion. A method with a stand-in for a missing modality
        fills it in first and shows the fusion every modality."""
        return self.fusion(features.cls, visible)

    def auxiliary_losses(
        self, features: Features, availability: Availability, batch: Batch
    ) -> dict[str, tuple[torch.Tensor, float]]:
        """Name -> (loss, weight) added to the task loss (CMPT: its alignment loss, lambda of eq. 7).
        `availability.present` is what the samples have (an alignment target may be one that training dropped),
        `availability.visible` what the model was shown in this step."""
        return {}

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The optimizer's parameter groups: adapters, head and plug-ins at the run's learning rate, the method's
        own modules at `module_lr_scale` times it."""
        own, rest = [], []
        for name, parameter in self.named_parameters():
            if parameter.requires_grad:
                (rest if name.startswith(("encoders.", "head.", "plugins.")) else own).append(parameter)
        groups = [{"params": rest}]
        if own:
            groups.append({"params": own, "lr": lr * self.config.module_lr_scale})
        return groups

    def optimizer_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """`param_groups`, each split by the modality its parameters belong to (`modality_parameters`; the group
        records it as `"modality"`), so that a plug-in can scale one modality's learning rate (MWAM)."""
        owner = {id(p): m for m in self.modalities for p in self.modality_parameters(m)}
        groups = []
        for group in self.param_groups(lr, weight_decay):
            for modality in (*self.modalities, None):
                params = [p for p in group["params"] if owner.get(id(p)) == modality]
                if params:
                    groups.append({**group, "params": params, **({"modality": modality} if modality else {})})
        return groups

    # ----- shared machinery ------------------------------------------------------------------------------------

    @property
    def modalities(self) -> list[str]:
        return self.config.modalities

    def hooks(self) -> list[TrainingHooks]:
        """The method, then its plug-ins: what the training loop calls the hooks of."""
        return [self, *self.plugins.values()]

    def modality_parameters(self, modality: str) -> list[nn.Parameter]:
        """The trainable parameters that belong to `modality` alone: its encoder's adapters, and the method's
        parameters kept under the modality's name (`self.proxies["image"]` -> `proxies.image`)."""
        def belongs(name: str) -> bool:
            if name.startswith(("encoders.", "plugins.")):
                return name.startswith(f"encoders.{modality}.")
            return modality in name.split(".")

        return [p for name, p in self.named_parameters() if p.requires_grad and belongs(name)]

    def zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, device=self.device) if hasattr(self, "head") else torch.zeros(shape)

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    def collate(self, samples: list[dict]) -> Batch:
        return self.collator(samples)

    def encode_present(
        self,
        batch: Batch,
        modality: str,
        keep: torch.Tensor,
        visible: dict[str, torch.Tensor] | None = None,
        output_hidden_states: bool = False,
    ) -> EncoderOutput | None:
        """Run the encoder of `modality` on the samples in `keep` (a subset of those that have it) only, telling
        it each sample's availability pattern (`visible`, default: what the samples have).

        Returns its output with zero rows for the other samples, or None when no sample is kept.
        """
        present = batch.present[modality]
        keep = keep & present
        if not keep.any():
            return None
        inputs = batch.inputs[modality]
        if not torch.equal(keep, present):
            inputs = select_rows(inputs, keep[present])
        context = EncoderContext(visible if visible is not None else batch.present).rows(keep)
        out = self.encoders[modality](inputs, context, output_hidden_states)
        return EncoderOutput(
            scatter_rows(self.fusion.normalize(out.cls), keep),
            {name: scatter_rows(self.fusion.normalize(t), keep) for name, t in out.prefix.items()},
            None if out.hidden_states is None else tuple(scatter_rows(h, keep) for h in out.hidden_states),
        )

    def placeholder_inputs(self, modality: str) -> dict[str, torch.Tensor]:
        """The processed input that stands in for a missing `modality` (a batch of one): by default the
        processor's placeholder (empty text, black image, silence); methods may choose another."""
        return self.collator.placeholder(modality)

    def encode_placeholder(
        self, modality: str, device: torch.device, context: EncoderContext | None = None
    ) -> torch.Tensor:
        """CLS feature [d] of the modality's placeholder input, computed once per call and shared by all samples
        (of one availability pattern, `context`, where the encoding depends on it)."""
        if modality not in self._placeholder_inputs:
            self._placeholder_inputs[modality] = self.placeholder_inputs(modality)
        inputs = {k: v.to(device) for k, v in self._placeholder_inputs[modality].items()}
        return self.fusion.normalize(self.encoders[modality](inputs, context).cls)[0]

    @staticmethod
    def every_modality(visible: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`visible` with every modality shown: what a method that fills in missing modalities gives its fusion."""
        return {m: torch.ones_like(v) for m, v in visible.items()}

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
        features = self.encode(batch, visible)
        fused = self.fuse(features, visible)
        availability = Availability(present, visible)
        output = ModelOutput(self.head(fused), fused, features, availability)
        if batch.labels is not None:
            weighted = dict(self.auxiliary_losses(features, availability, batch))
            for plugin in self.plugins.values():
                weighted.update(plugin.auxiliary_losses(features, availability, batch))
            output.losses = {name: loss for name, (loss, _) in weighted.items()}
            output.loss_weights = {name: weight for name, (_, weight) in weighted.items()}
            output.task_loss = self.task_loss(output.logits, batch.labels)
            output.loss = output.task_loss + sum(w * output.losses[n] for n, w in output.loss_weights.items())
        return output

    @torch.no_grad()
    def logits_by_availability(
        self, batch: Batch, scenarios: dict[str, dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """Logits of `batch` under each scenario (name -> modality -> [B] bools: what each sample may show).
        A modality that a sample lacks stays missing whatever the scenario says.

        Where a method encodes a modality without looking at the others, only the fusion depends on which
        modalities a sample has: every modality of every sample is encoded once for all scenarios, so that many
        scenarios of one test set cost one encoding pass. A method that `encodes_by_availability` is run once
        per scenario instead.
        """
        present = batch.present
        shared = None if self.encodes_by_availability else self.encode(batch, present)
        logits = {}
        for name, scenario in scenarios.items():
            visible = {m: p & scenario[m] for m, p in present.items()}
            empty = ~torch.stack(list(visible.values())).any(0)
            if empty.any():
                first = int(empty.nonzero()[0])
                raise ValueError(f"scenario {name!r} leaves sample {first} (id {batch.ids[first]!r}) no modality")
            features = shared if shared is not None else self.encode(batch, visible)
            logits[name] = self.head(self.fuse(features, visible))
        return logits

    @torch.no_grad()
    def predict(self, samples: list[dict], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities (softmax, or per-class sigmoid for multi-label) for samples with any modalities:
        `[len(samples), num_classes]`, so `[0, num_classes]` for no samples. Labels in the samples are ignored;
        errors name a sample by its position in `samples`."""
        if isinstance(samples, Mapping) or not isinstance(samples, (list, tuple)):
            raise ValueError(f"predict takes a list of samples (dicts), got a {type(samples).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        if not samples:
            return torch.empty(0, self.config.num_classes)
        was_training = self.training
        self.eval()
        device = self.device
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

    # ----- parameters, state, saving, loading ------------------------------------------------------------------

    def __reduce__(self):
        """Pickling and `copy.deepcopy` rebuild the model from its config and state: the hooks that extend the
        encoders close over the model that registered them, so a copy of the objects would be driven by the
        original's parameters."""
        return _rebuild, (type(self), self.config, self.state_dict(), self.training, self.dropout_rng.getstate())

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part: the adapters of each encoder, each module of the method (e.g.
        `proxies`, `prompts`), each plug-in, the head, and the totals."""
        counts: dict[str, int] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            top, second = (name.split(".") + [""])[:2]
            if top == "encoders":
                own = name.removeprefix(f"encoders.{second}.") in self.encoders[second].trained_backbone
                part = f"backbone.{second}" if own else f"adapters.{second}"
            else:
                part = second if top == "plugins" else top
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
        """What training changes and `save_pretrained` stores (`serialisation.trainable_state_dict`)."""
        return serialisation.trainable_state_dict(self)

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `trainable_state_dict` saved, names and shapes checked first."""
        serialisation.load_trainable_state_dict(self, state)

    @classmethod
    def upgrade_state_dict(cls, state: dict[str, torch.Tensor], version: int) -> dict[str, torch.Tensor]:
        """Weights saved by an older `serialisation.FORMAT_VERSION`, renamed to this one's layout."""
        return state

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the config and the trained state into `directory` (`serialisation.save_pretrained`); `load_model`
        reads them back."""
        serialisation.save_pretrained(self, directory)

    # ----- keyword options (robustmm.options) ------------------------------------------------------------------

    @classmethod
    def default_adapter(cls) -> AdapterConfig:
        return keyword_options.default_adapter(cls)

    @classmethod
    def own_option_fields(cls) -> dict[str, tuple[Any, Any]]:
        """The method's keyword options, name -> (type, default): its config's fields and the adapter shorthands."""
        return keyword_options.own_option_fields(cls)

    @classmethod
    def option_fields(cls) -> dict[str, tuple[Any, Any]]:
        """Every keyword option of `config_from_kwargs`: the method's own and every plug-in's."""
        return keyword_options.option_fields(cls)

    @classmethod
    def option_names(cls) -> list[str]:
        return list(cls.option_fields())

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        return {name: default for name, (_, default) in cls.option_fields().items()}

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Check option values without loading any encoder."""
        keyword_options.check_options(cls, options)

    @classmethod
    def config_from_kwargs(cls, encoders, num_classes, **options) -> ModelConfig:
        return keyword_options.config_from_kwargs(cls, encoders, num_classes, **options)


def _rebuild(cls, config, state, training, dropout_state) -> MultimodalModel:
    model = cls(config)
    model.load_state_dict(state)
    model.dropout_rng.setstate(dropout_state)
    return model.train(training)
