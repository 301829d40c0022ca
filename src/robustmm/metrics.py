"""Classification metrics from logits, with `torchmetrics`.

Single-label tasks score the softmax. Multi-label tasks score per-class sigmoids with F1 at threshold 0.5 (the
MAP protocol's), and the averaging is always in the name (`f1_macro`, `f1_micro`): torchmetrics' own default is
micro, a known source of confusion. AUROC is binary (probability of class 1) for two classes, as reported for
Hateful Memes, and macro over classes otherwise. The first metric of a list selects the checkpoint on validation.
"""

from __future__ import annotations

import statistics

import torch
from torchmetrics.functional import classification as C

THRESHOLD = 0.5


def accuracy(logits, labels, multilabel):
    if multilabel:
        return C.multilabel_accuracy(logits.sigmoid(), labels.int(), labels.shape[1], threshold=THRESHOLD)
    return C.multiclass_accuracy(logits, labels, logits.shape[1], average="micro")


def f1_macro(logits, labels, multilabel):
    if multilabel:
        return C.multilabel_f1_score(logits.sigmoid(), labels.int(), labels.shape[1], THRESHOLD, average="macro")
    return C.multiclass_f1_score(logits, labels, logits.shape[1], average="macro")


def f1_micro(logits, labels, multilabel):
    if multilabel:
        return C.multilabel_f1_score(logits.sigmoid(), labels.int(), labels.shape[1], THRESHOLD, average="micro")
    return C.multiclass_f1_score(logits, labels, logits.shape[1], average="micro")


def auroc(logits, labels, multilabel):
    if multilabel:
        return C.multilabel_auroc(logits.sigmoid(), labels.int(), labels.shape[1], average="macro")
    if logits.shape[1] == 2:
        return C.binary_auroc(logits.softmax(-1)[:, 1], labels)
    return C.multiclass_auroc(logits.softmax(-1), labels, logits.shape[1], average="macro")


METRICS = {f.__name__: f for f in (accuracy, f1_macro, f1_micro, auroc)}


def default_metrics(multilabel: bool) -> list[str]:
    return ["f1_macro", "f1_micro"] if multilabel else ["accuracy"]


def compute_metrics(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool, names=None) -> dict[str, float]:
    """The named metrics (default: accuracy, or F1 macro and micro for multi-label) as floats."""
    names = list(names or default_metrics(multilabel))
    unknown = set(names) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; available: {sorted(METRICS)}")
    return {name: float(METRICS[name](logits, labels, multilabel)) for name in names}


def per_class_scores(logits: torch.Tensor, labels: torch.Tensor, multilabel: bool) -> list[float]:
    """Per-class F1 (multi-label) or per-class accuracy, i.e. recall (single-label), for per-class gain plots."""
    if multilabel:
        scores = C.multilabel_f1_score(logits.sigmoid(), labels.int(), labels.shape[1], THRESHOLD, average="none")
    else:
        scores = C.multiclass_accuracy(logits, labels, logits.shape[1], average="none")
    return [float(s) for s in scores]


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample SD over seeds; the SD of one value is 0 (a table of one seed shows it as ± 0)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
