"""Temperature scaling (Guo et al. 2017), expected calibration error and Brier score.

One scalar ``T`` divides the logits before the task's activation (softmax or sigmoid); it is fitted
by minimising the negative log-likelihood on held-out films, so the arg-max (the predicted class)
never changes, only how confident the probabilities are.

ECE uses :data:`ECE_BINS` equal-width bins.  Multiclass: the confidence is the top probability and
"correct" means the arg-max is the true class.  Multilabel: every (film, finding) probability is
one prediction and "correct" means the finding is present.  Brier: the squared error between the
probability vector and the one-hot (multilabel: 0/1) truth, summed over classes and averaged over
films (multiclass range 0..2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxrtool.task import Task

ECE_BINS = 15
#: search range of log T: T in [e^-4, e^4] (0.018 .. 55) covers any sane network
_LOG_T_BOUNDS = (-4.0, 4.0)


def scaled_probs(task: Task, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The task's probabilities of ``logits / temperature``."""
    return task.probs(np.asarray(logits, dtype=np.float64) / float(temperature))


def nll(task: Task, logits: np.ndarray, targets: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets (cross-entropy, or BCE averaged over classes)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    t = np.asarray(targets)
    if task.multilabel:
        # log(1 + e^-|z|) form: stable for any z
        loss = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        return float(loss.mean())
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(t)), t.astype(int)].mean())


def fit_temperature(task: Task, logits: np.ndarray, targets: np.ndarray) -> float:
    """The ``T > 0`` that minimises :func:`nll` on these films (bounded 1-D search on log T)."""
    from scipy.optimize import minimize_scalar

    if len(logits) == 0:
        raise ValueError("no films to fit a temperature on")
    result = minimize_scalar(
        lambda s: nll(task, logits, targets, float(np.exp(s))),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(result.x))


@dataclass(frozen=True)
class ReliabilityBins:
    """Per equal-width bin: films, mean confidence and observed accuracy (NaN where empty)."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        n = self.counts.sum()
        used = self.counts > 0
        return (
            float((self.counts[used] / n * np.abs(self.accuracy[used] - self.confidence[used])).sum())
            if n
            else float("nan")
        )


def _confidence_and_hits(task: Task, probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    if task.multilabel:
        return probs.ravel(), np.asarray(targets, dtype=np.float64).ravel()
    return probs.max(1), (probs.argmax(1) == np.asarray(targets).astype(int)).astype(np.float64)


def reliability(task: Task, probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> ReliabilityBins:
    """Reliability-diagram bins (the data of the plot and of :func:`ece`)."""
    conf, hits = _confidence_and_hits(task, probs, targets)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)  # (lo, hi], first bin [0, hi]
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, conf, bins) / counts
        accuracy = np.bincount(which, hits, bins) / counts
    return ReliabilityBins(edges, counts, confidence, accuracy)


def ece(task: Task, probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``bins`` equal-width bins (see the module docstring)."""
    return reliability(task, probs, targets, bins).ece


def brier(task: Task, probs: np.ndarray, targets: np.ndarray) -> float:
    """Brier score: squared error to the truth, summed over classes, averaged over films."""
    probs = np.asarray(probs, dtype=np.float64)
    truth = task.one_hot(np.asarray(targets), probs.shape[1])
    return float(((probs - truth) ** 2).sum(1).mean())


def calibration_metrics(task: Task, logits: np.ndarray, targets: np.ndarray, temperature: float) -> dict[str, float]:
    """``ece``, ``brier`` and ``nll`` before (T = 1) and after scaling by ``temperature``."""
    before, after = scaled_probs(task, logits), scaled_probs(task, logits, temperature)
    return {
        "ece": ece(task, before, targets),
        "brier": brier(task, before, targets),
        "nll": nll(task, logits, targets),
        "ece_calibrated": ece(task, after, targets),
        "brier_calibrated": brier(task, after, targets),
        "nll_calibrated": nll(task, logits, targets, temperature),
        "temperature": float(temperature),
    }
