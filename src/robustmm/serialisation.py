"""A model on disk: `save_pretrained` writes its config (JSON) and trained state (safetensors), `load_model` builds
it again, upgrading what older versions of robustmm wrote.

Only what training changes is stored (`trainable_state_dict`): adapters, the method's parameters and persistent
buffers, the head. The frozen encoders are loaded again from the paths the config records.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from .atomic import atomic_write, atomic_write_text
from .adapters import AdapterConfig
from .checks import load_json, with_current_names
from .encoders import EncoderConfig
from .registry import UnknownNameError, get_method, import_modules, model_sources, unknown_code_message

CONFIG_FILE = "robustmm_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 4
"""Version of the saved layout (`robustmm_config.json` records it). 2: method parameters live in the method, not
in the encoders (CMPT's `encoders.<m>.proxy_tokens` became `proxies.<m>`); persistent method state is saved.
3: the fusion is a module with options of its own (`fusion`, `fusion_options`): format 2's `fusion_norm`, and
MoLT's `fusion_layers`, `fusion_heads` and `fusion_dropout`, are its options; its parameters keep their names.
4: an encoder's `dropout` is `keep_backbone_dropout`, the adapter's `kind` is its `type`."""


def upgrade_config(options: dict, version: int) -> dict:
    """A saved config of an older `FORMAT_VERSION` (without `format_version` and `method`) in this one's layout,
    one format at a time."""
    if version < 3:
        moved = {k: options.pop(k) for k in list(options) if k.startswith("fusion_") and k != "fusion_options"}
        options["fusion_options"] = {**(options.get("fusion_options") or {}),
                                     **{k.removeprefix("fusion_"): v for k, v in moved.items()}}
    if version < 4:
        options["encoders"] = {
            m: with_current_names(e, EncoderConfig.RENAMED, f"encoder {m!r}") if isinstance(e, dict) else e
            for m, e in options.get("encoders", {}).items()
        }
        if isinstance(options.get("adapter"), dict):
            options["adapter"] = with_current_names(options["adapter"], AdapterConfig.RENAMED, "adapter")
    return options


def trainable_state_dict(model) -> dict[str, torch.Tensor]:
    """Everything training changes: adapters, the method's parameters, the head, and the method's persistent
    buffers (feature banks, running statistics). The frozen encoders are not stored."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    state = model.state_dict()
    names |= {n for n, _ in model.named_buffers() if n in state and ".backbone." not in n}
    return {n: t.detach().cpu().contiguous() for n, t in state.items() if n in names}


def load_trainable_state_dict(model, state: dict[str, torch.Tensor]) -> None:
    """Load what `trainable_state_dict` saved; names and shapes are checked first, so that weights of another
    model are reported by the first tensor that does not fit rather than by PyTorch's list of all of them."""
    expected = trainable_state_dict(model)
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
    model.load_state_dict(state, strict=False)


def save_pretrained(model, directory: str | os.PathLike) -> None:
    """Write the config (JSON) and the trained state (safetensors) atomically into `directory`; the config
    records where an outside method or plug-in lives (`sources`, name -> module:Class). The weights
    (the trainable state only, small) are serialized in memory and written by Python, so that a failed write
    reports the OS error (`atomic_write`), which safetensors' own file writer turns into text."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"format_version": FORMAT_VERSION, "method": model.method, **model.config.to_dict()}
    sources = model_sources(model.method, model.plugins, model.config.fusion)
    if sources:  # where outside code lives, for the message of a process that does not know it
        config["sources"] = sources
    weights = safetensors_bytes(trainable_state_dict(model), metadata={"method": model.method})
    atomic_write(directory / WEIGHTS_FILE, lambda p: Path(p).write_bytes(weights))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(config, indent=2))


def load_model(directory: str | os.PathLike, imports=()):
    """Rebuild a model saved by `save_pretrained`: the encoders are loaded again from their recorded paths.

    `imports`: modules to import first (`import_modules`), those of an outside method or plug-in that is not
    installed as an entry point; the saved config records where they live, but loading never imports on its say.
    A damaged or mismatched file is a `ValueError` that names it: the weights are read before the encoders are
    loaded, so that a truncated file is reported at once.
    """
    import_modules(imports, "imports")
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} holds no {CONFIG_FILE}; is it a directory written by save_pretrained?")
    if not weights_path.is_file():
        raise FileNotFoundError(f"{directory} holds {CONFIG_FILE} but no {WEIGHTS_FILE}; was saving interrupted?")
    sources = {}
    try:
        options = load_json(config_path.read_text(encoding="utf-8"))
        if not isinstance(options, dict) or not isinstance(options.get("method"), str):
            raise ValueError("expected a JSON object with a 'method' name")
        version = options.pop("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(f"format version {version!r} is newer than this robustmm reads ({FORMAT_VERSION})")
        sources = options.pop("sources", None) or {}
        if not isinstance(sources, dict):
            raise ValueError(f"'sources' must map names to module:Class, got {sources!r}")
        cls = get_method(options.pop("method"))
        config = cls.config_class(**upgrade_config(options, version))
    except UnknownNameError as error:
        raise ValueError(unknown_code_message(config_path, error, sources)) from error
    except (ValueError, TypeError, AttributeError, KeyError) as error:  # a field of the wrong type or shape
        raise ValueError(f"{config_path}: damaged or not written by this version of robustmm: {error}") from error
    try:
        state = cls.upgrade_state_dict(load_file(weights_path), version)
    except SafetensorError as error:
        raise ValueError(f"{weights_path}: damaged or incomplete safetensors file ({error})") from error
    try:
        model = cls(config)
    except ValueError as error:  # an encoder recorded by path was moved or deleted since
        raise ValueError(f"{config_path}: cannot rebuild the model it records: {error}") from error
    try:
        model.load_trainable_state_dict(state)
    except ValueError as error:
        raise ValueError(f"{weights_path}: {error}") from error
    return model
