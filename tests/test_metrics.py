"""Metrics agree with scikit-learn's definitions, with the threshold and averaging they claim."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from robustmm.metrics import compute_metrics, per_class_scores


def test_multilabel_f1_at_threshold_half_matches_sklearn():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=generator)
    labels = (torch.rand(50, 5, generator=generator) < 0.4).float()
    predicted = (logits.sigmoid() > 0.5).numpy()
    scores = compute_metrics(logits, labels, multilabel=True)
    assert scores["f1_macro"] == pytest.approx(f1_score(labels.numpy(), predicted, average="macro"), abs=1e-6)
    assert scores["f1_micro"] == pytest.approx(f1_score(labels.numpy(), predicted, average="micro"), abs=1e-6)
    per_class = per_class_scores(logits, labels, multilabel=True)
    assert per_class == pytest.approx(list(f1_score(labels.numpy(), predicted, average=None)), abs=1e-6)


def test_accuracy_and_binary_auroc_match_sklearn():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 2, generator=generator)
    labels = torch.randint(0, 2, (40,), generator=generator)
    scores = compute_metrics(logits, labels, multilabel=False, names=["auroc", "accuracy"])
    assert list(scores) == ["auroc", "accuracy"]
    assert scores["accuracy"] == pytest.approx(accuracy_score(labels, logits.argmax(-1)))
    assert scores["auroc"] == pytest.approx(roc_auc_score(labels, logits.softmax(-1)[:, 1]), abs=1e-6)


def test_per_class_accuracy_is_recall_and_unknown_metric_is_an_error():
    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [2.0, 0, 0], [0, 0, 2.0]])
    labels = torch.tensor([0, 1, 1, 2])
    assert per_class_scores(logits, labels, multilabel=False) == pytest.approx([1.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(logits, labels, False, ["precision"])
    assert np.isfinite(compute_metrics(logits, labels, False, ["auroc"])["auroc"])


def test_mean_sd_is_the_sample_sd_over_seeds_and_zero_for_one_seed():
    from robustmm.metrics import mean_sd

    assert mean_sd([0.5, 0.7]) == pytest.approx((0.6, 0.1414213562))
    assert mean_sd([0.5]) == (0.5, 0.0)
