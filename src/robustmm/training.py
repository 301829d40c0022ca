"""Training and evaluation with `lightning` and `torchmetrics`.

Defaults are the paper's (Table 6): AdamW (eps 1e-8, weight decay 0.02; `optimizer="sgd"` with momentum 0.9 is
MWAM's host optimizer), a polynomial schedule of power 0.9
after warm-up epochs at 0.1x the learning rate. Checkpoints hold only what training changes (adapters, proxies,
head) plus optimizer and schedule state, so they stay small with billion-parameter encoders, are written
atomically (`AtomicCheckpointIO`), and a run started again in the same directory resumes from `last.ckpt`. The
model is selected on validation, never on test.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Sampler

from .metrics import compute_metrics, default_metrics
from .atomic import atomic_write, atomic_write_text
from .checks import check_field_types
from .model import MultimodalModel
from .precision import autocast, resolve_precision


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.02
    adam_eps: float = 1e-8
    optimizer: Literal["adamw", "sgd"] = "adamw"
    """`adamw` (CMPT's, MAP's and REP's) or `sgd` with `momentum` (MWAM's host: SGD, momentum 0.9)."""
    momentum: float = 0.9
    """SGD only."""
    warmup_epochs: float = 5
    """Epochs at the start whose learning rate is `warmup_factor` times `lr` (paper: 5 of 10). A warm-up that
    does not end before training does (the default with 5 epochs or fewer) is shortened to half of training,
    the paper's proportion, with a note on stderr; runs store the shortened value, so they resume unchanged."""
    warmup_factor: float = 0.1
    """The learning rate starts the warm-up at this times `lr` (paper Table 6: "0.1x lr during warm-up")."""
    warmup_method: Literal["linear", "constant"] = "linear"
    """`linear`: from `warmup_factor` x lr up to lr over the warm-up, then polynomial decay; `constant`: at
    `warmup_factor` x lr throughout the warm-up, then lr. Table 6 does not say which; `linear` is the warm-up poly
    schedule of the first author's earlier training code (MMSFormer) with these very settings. Over the paper's
    5 of 10 epochs the two differ much: a mean multiplier of 0.55 against 0.1."""
    poly_power: float = 0.9
    seed: int = 0
    num_workers: int = 0
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    """Lightning's precision; `auto` chooses bf16-mixed where the hardware computes bf16 natively (recent CUDA
    GPUs, CPUs with AVX512-BF16 or AMX) and 32-true elsewhere (`robustmm.precision`)."""
    accumulate_grad_batches: int = 1
    group_by_length: bool = False
    """Batch texts of similar length together (within groups of a few batches of the shuffled epoch), which
    cuts the padding that the encoders compute on; the composition and order of batches stay random."""
    progress_bar: bool = True
    log_every_n_steps: int = 10
    metrics: list[str] | None = None
    """Validation metrics (see `robustmm.metrics`); the first selects the checkpoint. None: the task's default."""

    def __post_init__(self):
        check_field_types(self)
        at_least = {"epochs": 1, "batch_size": 1, "num_workers": 0, "num_nodes": 1, "accumulate_grad_batches": 1,
                    "log_every_n_steps": 1, "weight_decay": 0, "poly_power": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        for name in ("lr", "adam_eps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_factor <= 1:  # 0: the warm-up starts from a learning rate of 0, as MAP's does
            raise ValueError(f"warmup_factor must be in [0, 1], got {self.warmup_factor}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in 0..2**32-1, got {self.seed}")
        self.devices = checked_devices(self.devices)
        for name, known in (("accelerator", known_accelerators), ("strategy", known_strategies)):
            names = known()
            if getattr(self, name) not in names:
                raise ValueError(f"{name} must be one of {', '.join(names)}, got {getattr(self, name)!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.warmup_epochs >= self.epochs:
            shortened = self.epochs / 2
            print(
                f"note: warmup_epochs {self.warmup_epochs:g} does not fit in training (epochs {self.epochs}); "
                f"shortened to {shortened:g}, half of training as in the paper (5 of 10 epochs)",
                file=sys.stderr,
            )
            self.warmup_epochs = shortened


def known_accelerators() -> list[str]:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]


def known_strategies() -> list[str]:
    from lightning.pytorch.strategies import StrategyRegistry

    return ["auto", *StrategyRegistry.available_strategies()]


def checked_devices(devices: int | str) -> int | str:
    """Lightning's `devices`: a count (-1: all), `auto`, or device indices such as "0,1" (a count given as text,
    "2", becomes 2). Anything else would reach Lightning, which answers with a TypeError from deep inside."""
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and (devices >= 1 or devices == -1):
        return devices
    if isinstance(devices, str):
        parts = [part.strip() for part in devices.split(",")]
        if devices.strip() == "auto" or (any(parts) and all(part.isdigit() for part in parts if part)):
            return devices.strip()
    raise ValueError(f"devices must be a count >= 1, -1 (all), auto or indices such as 0,1; got {devices!r}")


def poly_schedule(total_steps: int, warmup_steps: int, warmup_factor: float, power: float, warmup_method="linear"):
    """Learning-rate multiplier per optimizer step: the warm-up (linear from `warmup_factor` to 1, or constant at
    `warmup_factor`), then (1 - progress) ** power down to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            if warmup_method == "constant":
                return warmup_factor
            return warmup_factor + (1.0 - warmup_factor) * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return max(0.0, 1.0 - progress) ** power

    return factor


class LitClassifier(L.LightningModule):
    """Wraps a `MultimodalModel` for Lightning; its state dict is the model's trainable state only."""

    def __init__(self, model: MultimodalModel, config: TrainConfig, train_samples: Sequence[dict] | None = None):
        super().__init__()
        self.model = model
        self.config = config
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []
        self._last_output = None
        self.train_samples = train_samples
        """For the models' `on_fit_start` hooks."""

    def state_dict(self, *args, **kwargs):
        return self.model.trainable_state_dict()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self.model.load_trainable_state_dict(state_dict)

    def on_save_checkpoint(self, checkpoint):
        # Random state that training consumes (modality dropout, adapter dropout), so that a resumed run
        # continues exactly as an uninterrupted one would.
        checkpoint["modality_dropout_rng"] = self.model.dropout_rng.getstate()
        checkpoint["torch_rng"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint):
        self.model.dropout_rng.setstate(checkpoint["modality_dropout_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])

    def on_fit_start(self):
        for part in self.model.hooks():
            part.on_fit_start(self.train_samples)

    def training_step(self, batch, batch_index):
        output = self.model(batch)
        size = len(batch)
        self.log("train/loss", output.loss, prog_bar=True, batch_size=size)
        self.log("train/task_loss", output.task_loss, batch_size=size)
        for name, loss in output.losses.items():
            self.log(f"train/{name}_loss", loss, batch_size=size)
        self._last_output = output
        return output.loss

    def on_after_backward(self):
        for part in self.model.hooks():
            part.on_after_backward()

    def on_before_optimizer_step(self, optimizer):
        """Once per optimizer step, whatever `accumulate_grad_batches` is (MWAM decides K here)."""
        for part in self.model.hooks():
            part.on_before_optimizer_step(optimizer)
            for name, value in part.training_logs().items():
                self.log(f"train/{name}", value)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        for part in self.model.hooks():
            part.on_after_optimizer_step(getattr(optimizer, "optimizer", optimizer))

    def on_train_batch_end(self, outputs, batch, batch_index):
        output, self._last_output = self._last_output, None
        for part in self.model.hooks():
            part.on_train_batch_end(output)

    def validation_step(self, batch, batch_index):
        output = self.model(batch)
        self.log("val/loss", output.loss, batch_size=len(batch), sync_dist=True)
        self._val_logits.append(output.logits.detach())
        self._val_labels.append(batch.labels)

    def on_validation_epoch_end(self):
        logits, labels = torch.cat(self._val_logits), torch.cat(self._val_labels)
        self._val_logits.clear()
        self._val_labels.clear()
        for name, value in compute_metrics(logits, labels, self.model.config.multilabel, self.config.metrics).items():
            self.log(f"val/{name}", value, prog_bar=True, sync_dist=True)

    def configure_optimizers(self):
        c = self.config
        groups = self.model.optimizer_groups(c.lr, c.weight_decay)
        if c.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        else:
            optimizer = torch.optim.AdamW(groups, lr=c.lr, eps=c.adam_eps, weight_decay=c.weight_decay)
        total = self.trainer.estimated_stepping_batches
        warmup = math.floor(total * c.warmup_epochs / c.epochs)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, poly_schedule(total, warmup, c.warmup_factor, c.poly_power, c.warmup_method)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class StepReporter(L.Callback):
    """Calls `advance(1)` after every training step, e.g. to feed one progress bar from several runs."""

    def __init__(self, advance):
        self.advance = advance

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
        self.advance(1)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file next to it, then renames it over the old one (`atomic_write`).

    Lightning's own writer moves a file from the system's temporary folder; where that folder is another file
    system (a tmpfs /tmp), the move is a copy that a full disk or a kill leaves truncated, and `last.ckpt` is lost.
    torch.save goes through a Python file, so that a failure names the OS error (e.g. no space left on device).
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        def write(temporary):
            with open(temporary, "wb") as handle:
                torch.save(checkpoint, handle)

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)


GROUP_BATCHES = 8
"""With `group_by_length`, the shuffled epoch is sorted by length in groups of this many batches."""


class EpochShuffle(Sampler):
    """A permutation drawn from (seed, epoch), sharded by rank under DDP.

    Lightning sets the epoch, so a resumed run visits the samples in the same order as an uninterrupted one. Each
    rank takes every world-size-th index of the (padded) permutation. With `lengths`, each group of
    `GROUP_BATCHES` batches of the permutation is sorted by length and its batches are shuffled again.
    """

    def __init__(self, size: int, seed: int, lengths: Sequence[int] | None = None, batch_size: int = 1):
        self.size, self.seed, self.epoch = size, seed, 0
        self.lengths, self.batch_size = lengths, batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return math.ceil(self.size / self._rank_world()[1])

    def __iter__(self):
        rank, world = self._rank_world()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.lengths is not None:
            order = self._grouped_by_length(order, self.batch_size * world, generator)
        order += order[: len(self) * world - self.size]
        return iter(order[rank::world])

    def _grouped_by_length(self, order: list[int], step: int, generator: torch.Generator) -> list[int]:
        """`step` consecutive indices make one batch on every rank."""
        grouped = []
        for start in range(0, len(order), GROUP_BATCHES * step):
            group = sorted(order[start : start + GROUP_BATCHES * step], key=lambda i: -self.lengths[i])
            batches = [group[i : i + step] for i in range(0, len(group), step)]
            for index in torch.randperm(len(batches), generator=generator).tolist():
                grouped.extend(batches[index])
        return grouped


def text_lengths(model: MultimodalModel, samples: Sequence[dict]) -> list[int] | None:
    """Characters of text per sample, the cue of `group_by_length`, or None when the samples cannot tell
    without being loaded. Datasets give them from their records (`text_lengths()`)."""
    if not model.collator.text_modalities:
        return None
    if hasattr(samples, "text_lengths"):
        return samples.text_lengths()
    if not isinstance(samples, list):
        return None
    texts = model.collator.text_modalities
    return [sum(len(sample.get(m) or "") for m in texts) for sample in samples]


def make_loader(
    model: MultimodalModel,
    samples: Sequence[dict],
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    group_by_length: bool = False,
):
    """Training loaders shuffle with `EpochShuffle`; evaluation loaders are not sharded and keep the order, or
    with `group_by_length` go from the longest text to the shortest, which pads least (the loader's sampler
    then holds the order, for the caller to undo)."""
    lengths = text_lengths(model, samples) if group_by_length else None
    if shuffle:
        sampler = EpochShuffle(len(samples), seed, lengths, batch_size)
    elif lengths is not None:
        sampler = sorted(range(len(samples)), key=lambda i: -lengths[i])
    else:
        sampler = None
    return DataLoader(
        samples,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=model.collator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def train(
    model: MultimodalModel,
    train_samples: Sequence[dict],
    val_samples: Sequence[dict] | None = None,
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    callbacks: list | None = None,
    **overrides,
) -> MultimodalModel:
    """Train `model` on a sequence of samples (a list or a `Dataset`), selecting the best epoch on `val_samples`.

    With `out_dir`, checkpoints and CSV/TensorBoard logs go there, a restarted run resumes from its last
    checkpoint, and the selected model is saved to `out_dir/model` (`load_model` reads it back).
    """
    config = replace(config, **overrides) if config is not None else TrainConfig(**overrides)
    config = replace(config, precision=resolve_precision(config.precision, config.accelerator))
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = LitClassifier(model, config, train_samples)
    metric = f"val/{(config.metrics or default_metrics(model.config.multilabel))[0]}"
    callbacks, loggers = list(callbacks or []), False
    checkpoint = None
    if out_dir is not None:
        out_dir = Path(out_dir)
        checkpoint = ModelCheckpoint(
            dirpath=out_dir / "checkpoints",
            filename="best",
            monitor=metric if val_samples is not None else None,
            mode="max",
            save_last=True,
            enable_version_counter=False,
        )
        callbacks.append(checkpoint)
        # One version folder per attempt: a resumed run adds logs/version_1 and keeps what the first attempt wrote.
        loggers = [CSVLogger(out_dir, name="logs"), TensorBoardLogger(out_dir, name="tensorboard")]
    trainer = lightning_trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        accumulate_grad_batches=config.accumulate_grad_batches,
        callbacks=callbacks,
        logger=loggers,
        enable_checkpointing=checkpoint is not None,
        enable_progress_bar=config.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=config.log_every_n_steps,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # EpochShuffle shards training; every rank validates on the whole split
        plugins=[AtomicCheckpointIO()],
    )
    resume = None
    if checkpoint is not None and (Path(checkpoint.dirpath) / "last.ckpt").is_file():
        resume = str(Path(checkpoint.dirpath) / "last.ckpt")
        if trainer.is_global_zero:
            state = torch.load(resume, map_location="cpu", weights_only=True)
            print(
                f"resuming from {resume}: {state['epoch'] + 1} of {config.epochs} epochs done "
                f"(step {state['global_step']})",
                file=sys.stderr,
            )
    trainer.fit(
        module,
        make_loader(
            model, train_samples, config.batch_size, True, config.num_workers, config.seed, config.group_by_length
        ),
        None if val_samples is None else make_loader(
            model, val_samples, config.batch_size, False, config.num_workers, group_by_length=config.group_by_length
        ),
        ckpt_path=resume,
    )
    if checkpoint is not None and val_samples is not None and checkpoint.best_model_path:
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        model.load_trainable_state_dict(best["state_dict"])
    if out_dir is not None and trainer.is_global_zero:
        model.save_pretrained(out_dir / "model")
        text = json.dumps(asdict(config), indent=2)
        atomic_write_text(out_dir / "train_config.json", text)
    return model


def lightning_trainer(**settings) -> L.Trainer:
    """`L.Trainer(**settings)`; a setting that Lightning refuses (an accelerator this machine lacks, a strategy
    that does not fit the devices) is a ValueError that says it is a setting, not a traceback from inside."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(**settings)
    except (MisconfigurationException, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"the training settings are refused: {error}") from error


def predict_logits(
    model: MultimodalModel, samples: Sequence[dict], batch_size: int = 32, num_workers: int = 0, precision="32-true"
):
    """Logits and labels of labelled samples, whatever modalities each carries."""
    everything = {m: torch.ones(len(samples), dtype=torch.bool) for m in model.modalities}
    logits, labels = scenario_logits(model, samples, {"as given": everything}, batch_size, num_workers, precision)
    return logits["as given"], labels


@torch.inference_mode()
def scenario_logits(
    model: MultimodalModel,
    samples: Sequence[dict],
    scenarios: dict[str, dict[str, torch.Tensor]],
    batch_size: int = 32,
    num_workers: int = 0,
    precision="32-true",
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Logits of labelled samples under each scenario (name -> modality -> [N] bools: what each sample may show),
    and the labels, in the order of `samples`, from one encoding pass (`MultimodalModel.logits_by_availability`).
    Batches go from the longest text to the shortest, which pads least."""
    model.eval()
    device = model.device
    loader = make_loader(model, samples, batch_size, shuffle=False, num_workers=num_workers, group_by_length=True)
    order = torch.as_tensor(list(loader.sampler), dtype=torch.long)
    logits: dict[str, list[torch.Tensor]] = {name: [] for name in scenarios}
    labels, start = [], 0
    for batch in loader:
        rows = order[start : start + len(batch)]
        batch_scenarios = {
            name: {m: mask[rows].to(device) for m, mask in masks.items()} for name, masks in scenarios.items()
        }
        with autocast(precision, device.type):
            for name, values in model.logits_by_availability(batch.to(device), batch_scenarios).items():
                logits[name].append(values.float().cpu())
        labels.append(batch.labels)
        start += len(batch)
    unsorted = torch.empty_like(order)
    unsorted[order] = torch.arange(len(order))
    return {name: torch.cat(values)[unsorted] for name, values in logits.items()}, torch.cat(labels)[unsorted]


def evaluate(
    model: MultimodalModel, samples: Sequence[dict], batch_size: int = 32, metrics=None, precision="32-true"
) -> dict[str, float]:
    """Metrics of `model` on labelled samples (default: accuracy, or F1 macro/micro for multi-label)."""
    logits, labels = predict_logits(model, samples, batch_size, precision=precision)
    return compute_metrics(logits, labels, model.config.multilabel, metrics)
