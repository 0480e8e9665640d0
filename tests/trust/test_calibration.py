"""Temperature scaling, ECE and Brier score on synthetic data whose true calibration is known."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtool.task import get_task
from cxrtool.trust.temperature import brier, calibration_metrics, ece, fit_temperature, reliability, scaled_probs

MULTICLASS, MULTILABEL = get_task("multiclass"), get_task("multilabel")


def _sampled(n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True logits and labels drawn from their softmax: perfectly calibrated at T = 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2.0, (n, k))
    p = MULTICLASS.probs(z)
    y = np.array([rng.choice(k, p=row / row.sum()) for row in p])
    return z, y


@pytest.mark.parametrize("scale", [3.0, 0.5])
def test_temperature_undoes_over_and_under_confidence(scale: float) -> None:
    z, y = _sampled(6000, 3, seed=1)
    t = fit_temperature(MULTICLASS, z * scale, y)
    assert t == pytest.approx(scale, rel=0.08)
    m = calibration_metrics(MULTICLASS, z * scale, y, t)
    assert m["ece_calibrated"] < m["ece"] and m["nll_calibrated"] < m["nll"]
    assert m["ece_calibrated"] < 0.03


def test_temperature_keeps_the_predicted_class() -> None:
    z, y = _sampled(500, 3, seed=2)
    t = fit_temperature(MULTICLASS, 4 * z, y)
    assert (scaled_probs(MULTICLASS, 4 * z, t).argmax(1) == z.argmax(1)).all()


def test_ece_and_brier_by_hand() -> None:
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.55, 0.45]])
    y = np.array([0, 1, 1, 0])
    # confidences 0.9, 0.8, 0.7, 0.55 fall in bins (0.8667, 0.9333], (0.7333, 0.8], (0.6667, 0.7333], (0.5333, 0.6]
    # each bin holds one film: |acc - conf| = 0.1, 0.8, 0.3, 0.45 -> mean 0.4125
    assert ece(MULTICLASS, probs, y) == pytest.approx(0.4125)
    # squared error to one-hot, summed over classes: 0.02, 1.28, 0.18, 0.405 -> mean 0.47125
    assert brier(MULTICLASS, probs, y) == pytest.approx(0.47125)
    bins = reliability(MULTICLASS, probs, y)
    assert bins.counts.sum() == 4 and len(bins.counts) == 15


def test_multilabel_uses_every_finding() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, (4000, 4))
    y = (rng.random(z.shape) < MULTILABEL.probs(z)).astype(float)
    assert fit_temperature(MULTILABEL, 2 * z, y) == pytest.approx(2.0, rel=0.1)
    assert ece(MULTILABEL, MULTILABEL.probs(z), y) < 0.03 < ece(MULTILABEL, MULTILABEL.probs(4 * z), y)
