"""Classification metrics for training logs, ``evaluate`` and the INT8 gate.

Conventions: per-class precision/recall/specificity/F1 are ``None`` where undefined (0/0), and a
class with no true and no predicted samples is left out of macro-F1 rather than counted as 0 --
a finding absent from a small validation set says nothing about the model.  AUC is ``None`` when
only one of positive/negative is present.  ROC and AUC are scikit-learn's (the one AUC of the
package); a non-finite score is an error there (``ValueError``), never a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sklearn_roc_curve

from cxrtool.task import Task


def _div(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


def auc_score(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """ROC AUC (ties count one half); ``None`` when the labels hold only one of positive/negative."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    return float(roc_auc_score(labels, np.asarray(scores)))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
    fpr, tpr, _ = sklearn_roc_curve(np.asarray(labels).astype(bool), np.asarray(scores), drop_intermediate=False)
    return fpr, tpr


def _per_class(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for a, b, c, d in zip(tp, fp, fn, tn):
        rows.append(
            {
                "precision": _div(a, a + b),
                "recall": _div(a, a + c),
                "specificity": _div(d, d + b),
                "f1": _div(2 * a, 2 * a + b + c),
                "support": int(a + c),
            }
        )
    return rows


def _macro_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float | None:
    denom = 2 * tp + fp + fn
    defined = denom > 0
    return float(np.mean(2 * tp[defined] / denom[defined])) if defined.any() else None


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def confusion_matrix(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Rows = true class, columns = predicted class."""
    return np.bincount(np.asarray(y) * k + np.asarray(pred), minlength=k * k).reshape(k, k)


def multiclass_metrics(probs: np.ndarray, y: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/specificity/F1, one-vs-rest AUC, confusion matrix."""
    k = len(class_names)
    cm = confusion_matrix(y, probs.argmax(1), k)
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    tn = cm.sum() - tp - fp - fn
    aucs = [auc_score(probs[:, c], y == c) for c in range(k)]
    per = _per_class(tp, fp, fn, tn)
    for row, auc in zip(per, aucs):
        row["auc"] = auc
    return {
        "n": int(len(y)),
        "accuracy": _div(tp.sum(), cm.sum()),
        "macro_f1": _macro_f1(tp, fp, fn),
        "auc_macro": _mean(aucs),
        "per_class": dict(zip(class_names, per)),
        "confusion_matrix": cm.tolist(),
    }


def multilabel_metrics(
    probs: np.ndarray, y: np.ndarray, class_names: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Per-finding AUC and thresholded precision/recall/specificity/F1; accuracy = exact-match ratio."""
    truth = np.asarray(y) > 0.5
    pred = probs >= threshold
    tp = (pred & truth).sum(0)
    fp = (pred & ~truth).sum(0)
    fn = (~pred & truth).sum(0)
    tn = (~pred & ~truth).sum(0)
    aucs = [auc_score(probs[:, c], truth[:, c]) for c in range(len(class_names))]
    per = _per_class(tp, fp, fn, tn)
    for row, auc in zip(per, aucs):
        row["auc"] = auc
    return {
        "n": int(len(truth)),
        "accuracy": _div((pred == truth).all(1).sum(), len(truth)),
        "label_accuracy": _div((pred == truth).sum(), truth.size),
        "macro_f1": _macro_f1(tp, fp, fn),
        "auc_macro": _mean(aucs),
        "threshold": threshold,
        "per_class": dict(zip(class_names, per)),
    }


def compute_metrics(task: Task, probs: np.ndarray, targets: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """The task's metric set; multilabel decisions use the task's threshold."""
    if task.multilabel:
        return multilabel_metrics(probs, targets, class_names, task.threshold)
    return multiclass_metrics(probs, targets, class_names)


def _acc_f1(task: Task, probs: np.ndarray, targets: np.ndarray, k: int) -> tuple:
    if not task.multilabel:
        cm = confusion_matrix(targets, probs.argmax(1), k)
        tp = np.diag(cm)
        return tp.sum() / cm.sum(), _macro_f1(tp, cm.sum(0) - tp, cm.sum(1) - tp)
    truth, pred = targets > 0.5, probs >= task.threshold
    tp, fp, fn = (pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0)
    return (pred == truth).all(1).mean(), _macro_f1(tp, fp, fn)


def bootstrap_ci(
    task: Task,
    probs: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    *,
    n: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile bootstrap intervals (resampling images) for accuracy and macro-F1."""
    if n <= 0 or len(targets) == 0:
        return {"accuracy": None, "macro_f1": None}
    rng = np.random.default_rng(seed)
    accs, f1s = [], []
    for _ in range(n):
        idx = rng.integers(0, len(targets), len(targets))
        acc, f1 = _acc_f1(task, probs[idx], targets[idx], num_classes)
        accs.append(acc)
        if f1 is not None:
            f1s.append(f1)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {"accuracy": _interval(accs, lo, hi), "macro_f1": _interval(f1s, lo, hi), "level": level, "resamples": n}


def _interval(values: list[float], lo: float, hi: float) -> list[float] | None:
    return [float(np.percentile(values, lo)), float(np.percentile(values, hi))] if values else None
