"""Confusion-matrix, ROC and reliability pictures (matplotlib's Agg canvas: no display, no pyplot global state)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrtool.fsutil import atomic_path
from cxrtool.train.metrics import auc_score, roc_curve


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Counts in each cell, colour = share of the true class (row-normalised)."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    k = len(class_names)
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    ax.set_xticks(range(k), class_names, rotation=30, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title or "confusion matrix")
    return _save(fig, Path(path))


def plot_roc(
    probs: np.ndarray, truth: np.ndarray, class_names: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """One ROC curve per class (one-vs-rest) or finding; classes without both outcomes are skipped."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5.5))
    ax = fig.add_subplot()
    for c, name in enumerate(class_names):
        auc = auc_score(probs[:, c], truth[:, c])
        if auc is None:
            continue
        fpr, tpr = roc_curve(probs[:, c], truth[:, c])
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title(title or "ROC")
    return _save(fig, Path(path))


def plot_reliability(bins: Sequence[tuple[str, object]], path: str | Path, title: str = "") -> Path:
    """Reliability diagram: observed accuracy against mean confidence per bin, one line per
    ``(label, ReliabilityBins)`` (e.g. before and after temperature scaling), with each ECE.

    Bins without films are left out; the diagonal is perfect calibration.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 5.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    for label, b in bins:
        used = b.counts > 0
        ax.plot(b.confidence[used], b.accuracy[used], marker="o", label=f"{label} (ECE {b.ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel(f"mean confidence ({len(bins[0][1].counts)} equal-width bins)" if bins else "mean confidence")
    ax.set_ylabel("observed accuracy")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(title or "reliability")
    return _save(fig, Path(path))
