"""Temperature scaling per availability pattern: probabilities that mean the same with and without a modality.

A model trained to answer with any subset of its modalities is usually not equally sure of itself under each:
with the image missing it may still put 0.9 on answers that are right half of the time. One temperature `T` per
availability pattern (named by the modalities present, e.g. "image+text" or "text"), fitted by minimising the
negative log-likelihood of the validation labels, divides the logits of the predictions made under that
pattern (`softmax(z / T)`, or per class `sigmoid(z / T)` for multi-label tasks). Dividing by a positive number
keeps the ranking of the classes, so accuracy is unchanged; only how sure the model says it is changes.

Each pattern is produced from the validation split by hiding modalities: every validation sample that has all
of a pattern's modalities is shown with exactly those, so every pattern is fitted on the same kind of samples.
`robustmm calibrate RUN_DIR` writes the temperatures to `RUN_DIR/calibration.json`, which `robustmm predict`
applies.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import availability
from .availability import pattern_name
from .checks import load_json

CALIBRATION_FILE = "calibration.json"
RELIABILITY_BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)
"""Bounds of the fitted temperature: beyond them a pattern's validation samples are too few or too easy to say."""


def present_table(samples, modalities: Sequence[str]) -> np.ndarray:
    """[N, M] bools: which modalities each sample has (a dataset's `present_table`, or a list's non-None values)."""
    if hasattr(samples, "present_table"):
        order = list(samples.modalities)
        table = samples.present_table()
        return np.stack([table[:, order.index(m)] for m in modalities], 1)
    table = np.array([[s.get(m) is not None for m in modalities] for s in samples], dtype=bool)
    return table.reshape(-1, len(modalities))


def pattern_logits(model, samples, batch_size: int = 32, precision: str = "32-true") -> dict[str, tuple]:
    """Pattern name -> (logits, labels) of the labelled `samples` that have all of the pattern's modalities,
    each shown with exactly those, from one encoding pass."""
    from .training import scenario_logits

    modalities = model.modalities
    present = present_table(samples, modalities)
    every = availability.patterns(modalities)
    members = {p: present[:, [modalities.index(m) for m in p]].all(1) for p in every}
    scenarios = {
        pattern_name(p, modalities): {
            m: torch.from_numpy(np.where(members[p], m in p, present[:, i])) for i, m in enumerate(modalities)
        }
        for p in every
    }
    logits, labels = scenario_logits(model, samples, scenarios, batch_size, precision=precision)
    rows = {pattern_name(p, modalities): torch.from_numpy(members[p]) for p in every}
    return {name: (logits[name][rows[name]], labels[rows[name]]) for name in scenarios if rows[name].any()}


def probabilities(logits: torch.Tensor, multilabel: bool, temperature: float = 1.0) -> torch.Tensor:
    scaled = logits.double() / temperature
    return torch.sigmoid(scaled) if multilabel else scaled.softmax(-1)


def nll(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood: cross-entropy, or for multi-label tasks binary cross-entropy per class."""
    scaled = logits.double() / temperature
    if multilabel:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(scaled, labels.double()))
    return float(torch.nn.functional.cross_entropy(scaled, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> float:
    """The temperature that minimises the NLL of `labels`, searched over log T (the NLL is smooth and has one
    minimum there), within `TEMPERATURE_RANGE`."""
    from scipy.optimize import minimize_scalar

    low, high = (math.log(bound) for bound in TEMPERATURE_RANGE)
    found = minimize_scalar(
        lambda log_t: nll(logits, labels, multilabel, math.exp(log_t)), bounds=(low, high), method="bounded",
        options={"xatol": 1e-4},
    )
    return float(math.exp(found.x))


def reliability(probs: torch.Tensor, labels: torch.Tensor, multilabel: bool, bins: int = RELIABILITY_BINS) -> dict:
    """Reliability diagram and expected calibration error over equal-width confidence bins.

    Single-label: the confidence is the top probability and the outcome whether that class is right. Multi-label:
    every (sample, class) probability against whether the class applies. ECE = sum over bins of
    |mean confidence - accuracy| weighted by the share of predictions in the bin."""
    probs = probs.double()
    if multilabel:
        confidence, outcome = probs.flatten(), labels.double().flatten()
    else:
        confidence, predicted = probs.max(-1)
        outcome = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    index = torch.bucketize(confidence, edges[1:-1], right=True)
    table = []
    ece = 0.0
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        if count:
            mean_confidence, accuracy = float(confidence[inside].mean()), float(outcome[inside].mean())
            ece += count / len(confidence) * abs(mean_confidence - accuracy)
            table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                          "confidence": mean_confidence, "accuracy": accuracy})
    return {"ece": ece, "bins": table}


def fit_temperatures(model, samples, batch_size: int = 32, precision: str = "32-true") -> dict:
    """Temperatures per availability pattern of `model` on labelled `samples` (a list of dicts or a dataset),
    with each pattern's NLL and ECE before and after; patterns that no sample can show are left out."""
    multilabel = model.config.multilabel
    patterns = {}
    for name, (logits, labels) in pattern_logits(model, samples, batch_size, precision).items():
        temperature = fit_temperature(logits, labels, multilabel)
        patterns[name] = {
            "temperature": temperature,
            "at_bound": not TEMPERATURE_RANGE[0] * 1.01 < temperature < TEMPERATURE_RANGE[1] * 0.99,
            "samples": len(labels),
            "nll_before": nll(logits, labels, multilabel),
            "nll_after": nll(logits, labels, multilabel, temperature),
            "ece_before": reliability(probabilities(logits, multilabel), labels, multilabel)["ece"],
            "ece_after": reliability(probabilities(logits, multilabel, temperature), labels, multilabel)["ece"],
        }
    return {"kind": "temperature per availability pattern", "multilabel": multilabel,
            "modalities": list(model.modalities), "patterns": patterns}


def calibrate_run(run_dir, split: str = "val", batch_size: int | None = None, precision: str = "auto") -> dict:
    """Fit the temperatures of a run's model on its `split` and write them to `RUN_DIR/calibration.json`."""
    from .atomic import atomic_write_text
    from .config import RUN_CONFIG, read_run_config
    from .evaluation import inference_device, open_split
    from .precision import resolve_precision
    from .serialisation import load_model

    run_dir = Path(run_dir)
    config = read_run_config(run_dir / RUN_CONFIG)
    if not (run_dir / "model").is_dir():
        raise FileNotFoundError(f"{run_dir} has no model yet: finish the run with the same `robustmm train` command")
    model = load_model(run_dir / "model").to(inference_device(config.train.accelerator))
    data = open_split(config.dataset, split)
    precision = resolve_precision(precision, config.train.accelerator)
    result = {"run": str(run_dir), "split": split, "precision": precision,
              **fit_temperatures(model, data, batch_size or config.evaluation.batch_size, precision)}
    atomic_write_text(run_dir / CALIBRATION_FILE, json.dumps(result, indent=2))
    return result


def read_temperatures(path, modalities: Sequence[str] | None = None) -> dict[str, float]:
    """Pattern name -> temperature from a calibration file, checked (`checked_temperatures`); a damaged file
    names itself."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file" if path.exists() else f"{path}: no such calibration file")
    try:
        return checked_temperatures(load_json(path.read_text(encoding="utf-8")), modalities)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a calibration file written by `robustmm calibrate` ({error})") from error


def checked_temperatures(calibration: dict, modalities: Sequence[str] | None = None) -> dict[str, float]:
    """Pattern name -> temperature of a calibration, each a finite number within `TEMPERATURE_RANGE` (what
    `fit_temperature` can give): a temperature of 0 makes NaN probabilities and a negative one reverses the
    ranking of the classes, so a damaged or edited file would change every answer without a word. With
    `modalities`, each pattern must be one of theirs: a misspelt pattern would silently go unapplied."""
    entries = calibration["patterns"]
    if not isinstance(entries, dict):
        raise ValueError(f"patterns must be a mapping, got {type(entries).__name__}")
    known = None if modalities is None else {pattern_name(p, modalities) for p in availability.patterns(modalities)}
    low, high = TEMPERATURE_RANGE
    temperatures = {}
    for name, entry in entries.items():
        value = entry["temperature"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"pattern {name!r}: temperature {value!r} is not a number in [{low}, {high}]")
        if known is not None and name not in known:
            raise ValueError(f"pattern {name!r} is not an availability pattern of {', '.join(modalities)} "
                             f"(those are {', '.join(sorted(known))})")
        temperatures[name] = float(value)
    return temperatures


def temperatures_of(calibration, modalities: Sequence[str] | None = None) -> dict[str, float]:
    """Pattern name -> temperature from a calibration file or a `fit_temperatures` result, checked."""
    if isinstance(calibration, dict):
        try:
            return checked_temperatures(calibration, modalities)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not a calibration (a `fit_temperatures` result): {error!r}") from error
    return read_temperatures(calibration, modalities)


def format_calibration(result: dict) -> str:
    lines = [f"{'pattern':<24}{'samples':>8}{'T':>8}{'NLL before':>12}{'after':>8}{'ECE before':>12}{'after':>8}"]
    for name, entry in result["patterns"].items():
        lines.append(
            f"{name:<24}{entry['samples']:>8}{entry['temperature']:>8.3f}{entry['nll_before']:>12.4f}"
            f"{entry['nll_after']:>8.4f}{entry['ece_before']:>12.4f}{entry['ece_after']:>8.4f}"
            + ("  T at its bound: too few or too easy samples to say" if entry["at_bound"] else "")
        )
    return "\n".join(lines)
