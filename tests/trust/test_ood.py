"""The Mahalanobis OOD score on synthetic Gaussians: the formula, the threshold and the stored form."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from cxrtool.trust.ood import OodModel, fit_ood

LAYOUT = [("early", 6), ("penultimate", 10)]


def _data(n: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    means = np.arange(3)[:, None] * np.linspace(1, 2, 16)[None, :]
    mix = np.random.default_rng(0).normal(size=(16, 16)) / 4 + np.eye(16)  # correlated dimensions, same for every call
    x = means[labels] + rng.normal(size=(n, 16)) @ mix + shift
    return x, labels


def test_score_is_the_smallest_mahalanobis_distance_per_depth() -> None:
    x, y = _data(300, 1)
    val, _ = _data(100, 2)
    model = fit_ood(x, y, val, LAYOUT)
    probe, _ = _data(7, 3, shift=1.5)
    expected = []
    for d, (start, stop) in zip(model.depths, ((0, 6), (6, 16))):
        xs = x[:, start:stop]
        means = np.stack([xs[y == c].mean(0) for c in range(3)])
        precision = LedoitWolf(assume_centered=True).fit(xs - means[y]).precision_
        diff = probe[:, None, start:stop] - means[None]
        d2 = np.einsum("nkd,de,nke->nk", diff, precision, diff).min(1)
        expected.append((np.log(d2) - d.center) / d.scale)
    np.testing.assert_allclose(model.score(probe), np.mean(expected, axis=0), rtol=1e-9)


def test_threshold_lets_the_quantile_of_validation_films_pass_and_flags_far_ones() -> None:
    x, y = _data(400, 1)
    val, _ = _data(200, 2)
    model = fit_ood(x, y, val, LAYOUT, quantile=0.9)
    assert np.mean(model.score(val) <= model.threshold) == 181 / 200  # at least 90%: ceil(0.9 * 199) + 1 films
    fresh, _ = _data(500, 4)
    assert 0.8 < np.mean(model.score(fresh) <= model.threshold) < 0.97
    far, _ = _data(50, 5, shift=6.0)
    assert model.flagged(model.score(far)).all()


def test_stored_form_gives_the_same_scores() -> None:
    x, y = _data(200, 1)
    val, _ = _data(80, 2)
    model = fit_ood(x, y, val, LAYOUT, info={"n_train": 200})
    again = OodModel.from_stored(model.params(), model.tensors("trust."), "trust.")
    probe, _ = _data(20, 6, shift=2.0)
    np.testing.assert_allclose(
        again.score(probe), model.score(probe), rtol=1e-5, atol=1e-5
    )  # tensors are stored float32
    assert again.threshold == model.threshold and again.info == {"n_train": 200}
    tensors = model.tensors("trust.")
    del tensors["trust.ood.early.precision"]
    with pytest.raises(ValueError, match="trust.ood.early.precision"):
        OodModel.from_stored(model.params(), tensors, "trust.")


def test_multilabel_single_gaussian_and_bad_inputs() -> None:
    x, _ = _data(100, 1)
    model = fit_ood(x, None, x[:20], LAYOUT)
    assert all(len(d.means) == 1 for d in model.depths)
    with pytest.raises(ValueError, match="features of shape"):
        model.score(x[:, :10])
    with pytest.raises(ValueError, match="too few"):
        fit_ood(x, None, x[:1], LAYOUT)
