"""Metrics against hand-computed values and a brute-force AUC."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cxrtool.task import get_task
from cxrtool.train.metrics import auc_score, bootstrap_ci, multiclass_metrics, multilabel_metrics, roc_curve


def brute_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)]
    return float(np.mean(pairs))


def test_auc_matches_pairwise_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.integers(0, 2, 40)
    assert auc_score(scores, labels) == pytest.approx(brute_auc(scores, labels))
    assert auc_score(scores, np.ones(40)) is None


def test_auc_undefined_and_non_finite() -> None:
    """One outcome only: no AUC (not 0.5); a NaN or inf score is an error, never a number."""
    scores = np.linspace(0, 1, 6)
    assert auc_score(scores, np.zeros(6)) is None
    assert auc_score(scores, np.array([0, 0, 0, 1, 1, 1])) == 1.0
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError):
            auc_score(np.r_[scores[:-1], bad], np.array([0, 0, 0, 1, 1, 1]))


def test_roc_curve_ends_and_area() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2])
    labels = np.array([1, 0, 1, 0, 0])
    fpr, tpr = roc_curve(scores, labels)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc_score(scores, labels))


def test_multiclass_metrics_by_hand() -> None:
    # true: a a b b c ; predicted: a b b b a
    probs = np.eye(3)[[0, 1, 1, 1, 0]] * 0.8 + 0.2 / 3
    m = multiclass_metrics(probs, np.array([0, 0, 1, 1, 2]), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    a, b, c = (m["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["specificity"]) == (0.5, 0.5, pytest.approx(2 / 3))
    assert b["f1"] == pytest.approx(0.8) and c["f1"] == 0.0 and c["precision"] is None
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_multilabel_absent_finding_is_left_out_of_macro_f1() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0]])
    probs = np.array([[0.9, 0.1], [0.2, 0.3], [0.4, 0.2]])
    m = multilabel_metrics(probs, y, ["x", "never"])
    assert m["per_class"]["never"]["f1"] is None and m["per_class"]["never"]["auc"] is None
    assert m["macro_f1"] == pytest.approx(2 / 3)  # only x: tp 1, fn 1
    assert m["accuracy"] == pytest.approx(2 / 3) and m["auc_macro"] == pytest.approx(1.0)


def test_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    probs = np.where(rng.random((200, 1)) < 0.7, np.eye(3)[y], rng.dirichlet(np.ones(3), 200))
    m = multiclass_metrics(probs, y, ["a", "b", "c"])
    ci = bootstrap_ci(get_task("multiclass"), probs, y, 3, n=300, seed=0)
    assert ci["accuracy"][0] < m["accuracy"] < ci["accuracy"][1]
    assert ci["macro_f1"][0] < m["macro_f1"] < ci["macro_f1"][1]
    assert ci["accuracy"][1] - ci["accuracy"][0] < 0.2
