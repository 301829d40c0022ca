"""The method contract as checks anyone can run on a method, built-in or their own, without a source checkout:
every availability pattern trains and predicts without NaN, per-scenario logits equal plain forward passes, save
and load give the same logits, a copy is a model of its own and pickles, a killed run resumes to the same model.

`robustmm check-method NAME_OR_MODULE:CLASS` runs them on tiny random encoders (`robustmm.tiny`); the test suite
runs the same functions over every registered method.
"""

from __future__ import annotations

import importlib
import pickle
import tempfile
from copy import deepcopy
from pathlib import Path

import lightning
import numpy as np
import torch
from PIL import Image

from . import availability
from .registry import build_model
from .serialisation import load_model
from .training import train

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]
WORDS = ["red", "green", "blue"]
SMALL = {
    "map": dict(prompt_depth=2, prompt_length=2),
    "rep": dict(buffer_length=2, depth=2),
    "molt": dict(latent_size=16, fusion_layers=1),
}
"""Options of the built-in methods that fit the tiny two-layer encoders."""


def make_samples(n: int, seed: int = 0, with_audio: bool = False) -> list[dict]:
    """Labelled image+text (+audio) samples of three classes that colour, word and pitch tell apart."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        label = int(rng.integers(3))
        sample = {
            "id": f"s{seed}-{i}",
            "image": Image.new("RGB", (32, 32), COLOURS[label]),
            "text": f"a {WORDS[label]} dog",
            "label": label,
        }
        if with_audio:
            sample["audio"] = (np.sin(np.arange(8000) * (label + 1) * 0.05) * 0.5).astype(np.float32)
        samples.append(sample)
    return samples


def every_pattern(modalities: list[str], n_each: int = 2) -> list[dict]:
    """Samples of each availability pattern, n_each of each."""
    samples = []
    for index, pattern in enumerate(availability.patterns(modalities)):
        for sample in make_samples(n_each, seed=index, with_audio="audio" in modalities):
            samples.append({k: (None if k in modalities and k not in pattern else v) for k, v in sample.items()})
    return samples


class StopBeforeEpoch(lightning.Callback):
    """Simulates a run killed after `epoch` epochs have been checkpointed."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("killed")


def expect(condition, message: str) -> None:
    """An assertion that `python -O` keeps."""
    if not condition:
        raise AssertionError(message)


def build(method: str, encoders: dict, **options):
    return build_model(method, encoders=encoders, num_classes=3, seed=1, **{**SMALL.get(method, {}), **options})


def check_every_pattern(method: str, encoders: dict, **options) -> None:
    """A batch of every availability pattern trains (finite loss and gradients, losses named and weighted, the
    hooks run) and predicts probabilities that sum to one."""
    modalities = list(encoders)
    model = build(method, encoders, **options)
    out = model.train()(model.collate(every_pattern(modalities)))
    expect(torch.isfinite(out.loss) and torch.isfinite(out.logits).all(), "a loss or logit is not finite")
    expect(set(out.losses) == set(out.loss_weights), "every auxiliary loss needs a weight")
    weighted = out.task_loss + sum(out.loss_weights[n] * out.losses[n] for n in out.losses)
    torch.testing.assert_close(out.loss, weighted, msg="loss != task loss + weighted auxiliary losses")
    out.loss.backward()
    for part in model.hooks():
        part.on_after_backward()
        part.on_train_batch_end(out)
    trained = [p for p in model.parameters() if p.requires_grad]
    expect(all(p.grad is None or torch.isfinite(p.grad).all() for p in trained), "a gradient is not finite")
    expect(any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained), "no parameter gets a gradient")
    probabilities = model.predict(every_pattern(modalities, 1))
    expect(probabilities.shape == (len(availability.patterns(modalities)), 3), "one row of probabilities per sample")
    expect(torch.isfinite(probabilities).all(), "a probability is not finite")
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(len(probabilities)), msg="probabilities sum to 1")


def check_scenario_logits(method: str, encoders: dict, **options) -> None:
    """`logits_by_availability` (one encoding pass for many scenarios) equals a forward pass per scenario."""
    model = build(method, {"image": encoders["image"], "text": encoders["text"]}, **options).eval()
    samples = make_samples(5)
    samples[3]["text"] = None
    shows = {
        "complete": ([1] * 5, [1] * 5),
        "text missing": ([1] * 5, [0] * 5),
        "mixed": ([0, 1, 1, 1, 0], [1, 1, 0, 1, 1]),
    }
    scenarios = {n: {"image": torch.tensor(i).bool(), "text": torch.tensor(t).bool()} for n, (i, t) in shows.items()}
    logits = model.logits_by_availability(model.collate(samples), scenarios)
    for name, (image, text) in shows.items():
        withheld = [
            {**s, "image": s["image"] if i else None, "text": s["text"] if t else None}
            for s, i, t in zip(samples, image, text)
        ]
        torch.testing.assert_close(logits[name], model(model.collate(withheld)).logits, atol=1e-5, rtol=1e-5,
                                   msg=lambda text, name=name: f"scenario {name!r}: {text}")


def check_save_and_load(method: str, encoders: dict, directory: Path, **options) -> None:
    """`save_pretrained` then `load_model` give identical logits; the parameter counts add up."""
    model = build(method, {"image": encoders["image"], "text": encoders["text"]}, **options)
    with torch.no_grad():  # move every trained tensor away from its initial value
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    batch = model.collate(every_pattern(["image", "text"]))
    model.save_pretrained(directory / "m")
    loaded = load_model(directory / "m")
    torch.testing.assert_close(loaded.eval()(batch).logits, model.eval()(batch).logits, msg="loaded logits differ")
    counts = model.trainable_parameter_counts()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    expect(counts["total_trainable"] == trainable, "total_trainable is not the trainable parameters")
    expect(sum(v for k, v in counts.items() if not k.startswith("total")) == trainable, "the parts do not add up")
    expect(counts["head"] > 0, "the head trains")
    adapted = model.config.adapter.type != "none"
    expect((counts.get("adapters.image", 0) > 0 and counts.get("adapters.text", 0) > 0) == adapted,
           "the adapters of each encoder train, and only with an adapter")


def check_copy(method: str, encoders: dict, **options) -> None:
    """A deep copy is driven by its own parameters, not the original's, and the model pickles."""
    model = build(method, {"image": encoders["image"], "text": encoders["text"]}, **options).eval()
    batch = model.collate(every_pattern(["image", "text"]))
    before = model(batch).logits
    copy = deepcopy(model)
    torch.testing.assert_close(copy(batch).logits, before, msg="a copy's logits differ")

    def own(name: str) -> bool:
        return not name.startswith(("encoders.", "head.", "plugins."))

    shifts = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a shift of its own for each value: one shift for all leaves a gated mean as it was
        for name, parameter in copy.named_parameters():
            if parameter.requires_grad and own(name):
                parameter.add_(0.5 + torch.rand(parameter.shape, generator=shifts).to(parameter.dtype))
    changed = copy(batch).logits
    torch.testing.assert_close(model(batch).logits, before, msg="changing a copy changed the original")
    if any(p.requires_grad and own(n) for n, p in model.named_parameters()):
        expect(not torch.allclose(changed, before), "the copy's own parameters do not drive it")
    torch.testing.assert_close(pickle.loads(pickle.dumps(model))(batch).logits, before, msg="unpickled logits differ")


def check_resume(method: str, encoders: dict, directory: Path, **options) -> None:
    """A run killed after its first epoch and started again ends with the model of an uninterrupted run."""
    encoders = {"image": encoders["image"], "text": encoders["text"]}
    train_samples, val_samples = every_pattern(["image", "text"], 4), every_pattern(["image", "text"], 2)
    settings = dict(epochs=2, warmup_epochs=0.5, batch_size=6, lr=1e-2, progress_bar=False)
    straight = train(build(method, encoders, **options), train_samples, val_samples, out_dir=directory / "a",
                     **settings)
    try:
        train(build(method, encoders, **options), train_samples, val_samples, out_dir=directory / "b",
              callbacks=[StopBeforeEpoch(1)], **settings)
    except RuntimeError as error:
        expect("killed" in str(error), f"the run failed otherwise: {error}")
    else:
        raise AssertionError("the simulated kill did not stop the run")
    resumed = train(build(method, encoders, **options), train_samples, val_samples, out_dir=directory / "b",
                    **settings)
    torch.testing.assert_close(resumed.predict(val_samples), straight.predict(val_samples),
                               msg="resumed predictions differ")
    for name, tensor in straight.trainable_state_dict().items():
        torch.testing.assert_close(resumed.trainable_state_dict()[name], tensor, msg=f"resumed {name} differs")


CHECKS = {
    "every availability pattern, two modalities": lambda m, e, d, o: check_every_pattern(
        m, {"image": e["image"], "text": e["text"]}, **o),
    "every availability pattern, three modalities": lambda m, e, d, o: check_every_pattern(
        m, {"image": e["image"], "text": e["text"], "audio": e["audio"]}, **o),
    "scenario logits equal plain forward passes": lambda m, e, d, o: check_scenario_logits(m, e, **o),
    "save and load": lambda m, e, d, o: check_save_and_load(m, e, d, **o),
    "a copy is a model of its own and pickles": lambda m, e, d, o: check_copy(m, e, **o),
    "a killed run resumes to the same model": lambda m, e, d, o: check_resume(m, e, d, **o),
}
"""Name -> check(method, tiny encoders, scratch folder, options)."""


def tiny_encoders(root: Path) -> dict[str, str]:
    """Tiny random text, image and audio encoders saved in the Hugging Face layout under `root`."""
    from .tiny import save_tiny_encoder

    return {kind: save_tiny_encoder(kind, root / kind) for kind in ("text", "image", "audio")}


def check_method(method: str, options: dict | None = None, log=print) -> list[str]:
    """Run every check on `method` (a registered name) with `options`; returns the names of those that failed,
    each logged with its reason."""
    failed = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models run faster on one thread
    try:
        with tempfile.TemporaryDirectory(prefix="robustmm-contract-") as scratch:
            encoders = tiny_encoders(Path(scratch) / "encoders")
            for index, (name, check) in enumerate(CHECKS.items()):
                folder = Path(scratch) / f"check{index}"
                folder.mkdir()
                try:
                    check(method, encoders, folder, dict(options or {}))
                except Exception as error:  # a failed check is reported with its reason, the others still run
                    failed.append(name)
                    log(f"FAIL  {name}: {type(error).__name__}: {error}")
                else:
                    log(f"ok    {name}")
    finally:
        torch.set_num_threads(threads)
    return failed


def main(args) -> None:
    """`robustmm check-method`: the target is a registered name, or `module:Class` (the module is imported)."""
    from .data.commands import parse_options
    from .registry import METHODS, import_modules

    module, _, class_name = args.method.rpartition(":")
    if module:
        import_modules([module])
        cls = getattr(importlib.import_module(module), class_name, None)
        if cls is None or not getattr(cls, "method", "") or METHODS.entries.get(cls.method) is not cls:
            raise ValueError(f"{args.method}: no method registered by that name; decorate the class with "
                             "@robustmm.register_method(NAME) or declare it as an entry point (robustmm.methods)")
        name = cls.method
    else:
        name = METHODS.get(class_name).method
    options = parse_options(args.option) if args.option else {}
    print(f"checking method {name!r} ({METHODS.source(name) or 'built in'}) against the contract")
    failed = check_method(name, options)
    if failed:
        print(f"{len(failed)} of {len(CHECKS)} checks failed")
        raise SystemExit(1)
    print(f"all {len(CHECKS)} checks passed")
