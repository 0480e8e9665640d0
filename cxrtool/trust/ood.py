"""Feature-space out-of-distribution score: class-conditional Gaussians with a shared covariance.

Lee et al. 2018 (*A simple unified framework for detecting out-of-distribution samples and
adversarial attacks*): fit one mean per class and one shared covariance to the training films'
features; a film's distance is its smallest Mahalanobis distance to a class mean.  Chest X-ray
evaluations (Çallı et al. 2019; Wollek et al., Med Phys 2024) found it far better than softmax
confidence for a DenseNet.  Here:

* several depths (the pooled output of every DenseNet transition layer, plus the penultimate
  features) each get their own Gaussians: early depths react to texture, contrast and scale
  (a CT slice, a dental film), the last one to content;
* the covariance is Ledoit-Wolf shrunk (scikit-learn), since a training set of a few hundred
  films is far smaller than the 1024 feature dimensions;
* each depth's squared distance is put on a common scale with the *validation* films' median and
  MAD (training films sit closer to their own means than new in-distribution films do), and the
  score is the mean over depths of that robust z-score of ``log D²``;
* the threshold is the ``quantile`` (default 95%) of the validation films' scores (the next
  observed score up, so at least that share of them pass).

Multilabel models (findings are not exclusive) use one Gaussian per depth over all films.
The score is computed in float64 from the features, so every backend that returns the same
features gets the same score.  The linear algebra runs in torch when torch is already loaded (the
thread pool the model already uses: numpy's OpenBLAS keeps a second pool whose threads spin after
every call and took the cores from the model's next batch, measured: +28% on predict's end-to-end
time at 128 px), else in numpy, so ONNX Runtime / OpenVINO predict never pays torch's import.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrtool.trust.options import DEFAULT_QUANTILE

METHOD = "mahalanobis-ledoit-wolf/1"
_MAD_TO_SIGMA = 1.4826


@dataclass
class DepthStats:
    """One depth's Gaussians: rows ``start:stop`` of the feature vector, class means, shared precision."""

    name: str
    start: int
    stop: int
    means: np.ndarray  # (classes, width)
    precision: np.ndarray  # (width, width)
    shrinkage: float = 0.0
    center: float = 0.0  # validation median of log D²
    scale: float = 1.0  # validation MAD of log D² (as a sigma)
    _whiten: np.ndarray | None = field(default=None, repr=False)
    _white_means: np.ndarray | None = field(default=None, repr=False)

    def log_distance(self, features: np.ndarray) -> np.ndarray:
        """``log`` of the smallest squared Mahalanobis distance to a class mean, per film."""
        if self._whiten is None or self._white_means is None:
            # P = L L^T, so (f - m) P (f - m)^T = |(f - m) L|^2: one matrix product per batch
            self._whiten = _cholesky(np.asarray(self.precision, dtype=np.float64))
            self._white_means = np.asarray(self.means, dtype=np.float64) @ self._whiten
        f, w, m = np.asarray(features[:, self.start : self.stop], dtype=np.float64), self._whiten, self._white_means
        if "torch" in sys.modules:  # the model's thread pool (module docstring); never imported just for this
            import torch

            f, w, m = torch.as_tensor(f), torch.as_tensor(w), torch.as_tensor(m)
        f = f @ w
        d2 = (f * f).sum(1)[:, None] - 2 * f @ m.T + (m * m).sum(1)[None, :]
        return np.log(np.maximum(np.asarray(d2).min(1), 1e-12))


def _cholesky(precision: np.ndarray) -> np.ndarray:
    sym = (precision + precision.T) / 2
    try:
        return np.linalg.cholesky(sym)
    except np.linalg.LinAlgError:  # numerically not positive definite: clip the eigenvalues
        w, v = np.linalg.eigh(sym)
        return v * np.sqrt(np.clip(w, float(w.max()) * 1e-12, None))


@dataclass
class OodModel:
    """The fitted score: per-depth Gaussians, how depths are combined, and the flag threshold."""

    depths: list[DepthStats]
    threshold: float
    quantile: float = DEFAULT_QUANTILE
    info: dict[str, Any] = field(default_factory=dict)  # fitted on which splits, how many films

    @property
    def width(self) -> int:
        return max(d.stop for d in self.depths)

    def score(self, features: np.ndarray) -> np.ndarray:
        """``ood_score`` per film (higher = more unusual); float64."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] < self.width:
            raise ValueError(f"features of shape {features.shape}; this model's statistics need (N, {self.width})")
        z = [(d.log_distance(features) - d.center) / d.scale for d in self.depths]
        return np.mean(z, axis=0)

    def flagged(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.threshold

    # ------------------------------------------------------------ storage
    def params(self) -> dict[str, Any]:
        """What goes into the model card (everything except the tensors)."""
        return {
            "method": METHOD,
            "threshold": float(self.threshold),
            "quantile": float(self.quantile),
            **self.info,
            "depths": [
                {
                    "name": d.name,
                    "start": d.start,
                    "stop": d.stop,
                    "classes": int(len(d.means)),
                    "shrinkage": float(d.shrinkage),
                    "center": float(d.center),
                    "scale": float(d.scale),
                }
                for d in self.depths
            ],
        }

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        """The means and precision matrices, float32, keyed ``<prefix>ood.<depth>.means|precision``."""
        out = {}
        for d in self.depths:
            out[f"{prefix}ood.{d.name}.means"] = np.ascontiguousarray(d.means, dtype=np.float32)
            out[f"{prefix}ood.{d.name}.precision"] = np.ascontiguousarray(d.precision, dtype=np.float32)
        return out

    @classmethod
    def from_stored(cls, params: dict[str, Any], tensors: dict[str, np.ndarray], prefix: str) -> OodModel:
        """Rebuild from :meth:`params` and :meth:`tensors`; ``ValueError`` names what is missing."""
        if params.get("method") != METHOD:
            raise ValueError(f"unknown OOD method {params.get('method')!r} (this cxrtool reads {METHOD!r})")
        depths = []
        for p in params["depths"]:
            try:
                means, precision = (
                    tensors[f"{prefix}ood.{p['name']}.means"],
                    tensors[f"{prefix}ood.{p['name']}.precision"],
                )
            except KeyError as exc:
                raise ValueError(f"OOD tensor {exc.args[0]} is missing") from None
            depths.append(
                DepthStats(
                    p["name"],
                    int(p["start"]),
                    int(p["stop"]),
                    means,
                    precision,
                    p.get("shrinkage", 0.0),
                    p["center"],
                    p["scale"],
                )
            )
        info = {k: v for k, v in params.items() if k not in ("method", "threshold", "quantile", "depths")}
        return cls(depths, float(params["threshold"]), float(params["quantile"]), info)


def fit_gaussians(
    features: np.ndarray, labels: np.ndarray | None, layout: Sequence[tuple[str, int]]
) -> list[DepthStats]:
    """Per depth of ``layout``: class means (one mean when ``labels`` is None) and a Ledoit-Wolf precision."""
    from sklearn.covariance import LedoitWolf

    features = np.asarray(features, dtype=np.float64)
    labels = np.zeros(len(features), dtype=int) if labels is None else np.asarray(labels).astype(int)
    classes = np.unique(labels)
    if len(features) < 2:
        raise ValueError(f"{len(features)} film(s) are too few to fit feature statistics")
    out, start = [], 0
    for name, width in layout:
        x = features[:, start : start + width]
        means = np.stack([x[labels == c].mean(0) for c in classes])
        centred = x - means[np.searchsorted(classes, labels)]
        lw = LedoitWolf(assume_centered=True).fit(centred)
        out.append(DepthStats(name, start, start + width, means, lw.precision_, float(lw.shrinkage_)))
        start += width
    return out


def fit_ood(
    train_features: np.ndarray,
    train_labels: np.ndarray | None,
    val_features: np.ndarray,
    layout: Sequence[tuple[str, int]],
    *,
    quantile: float = DEFAULT_QUANTILE,
    info: dict[str, Any] | None = None,
) -> OodModel:
    """Gaussians on the training films, depth scaling and threshold on the validation films."""
    return scale_depths(fit_gaussians(train_features, train_labels, layout), val_features, quantile=quantile, info=info)


def scale_depths(
    depths: Sequence[DepthStats],
    val_features: np.ndarray,
    *,
    quantile: float = DEFAULT_QUANTILE,
    info: dict[str, Any] | None = None,
) -> OodModel:
    """Put fitted Gaussians on the validation films' scale and choose the threshold there.

    Also what ``calibrate --fit-split keep`` runs: the Gaussians stay, a site's own films set
    what "usual" means.
    """
    if not 0.5 <= quantile < 1.0:
        raise ValueError(f"the pass quantile must be in [0.5, 1), not {quantile}")
    if len(val_features) < 2:
        raise ValueError(f"{len(val_features)} validation film(s) are too few to choose a threshold")
    val_features = np.asarray(val_features)
    scaled = []
    for d in depths:
        logd = d.log_distance(val_features)
        center = float(np.median(logd))
        mad = float(np.median(np.abs(logd - center))) * _MAD_TO_SIGMA
        scale = mad if mad > 1e-9 else (float(logd.std()) or 1.0)
        scaled.append(DepthStats(d.name, d.start, d.stop, d.means, d.precision, d.shrinkage, center, scale))
    model = OodModel(scaled, 0.0, quantile, dict(info or {}))
    model.threshold = pass_threshold(model.score(val_features), quantile)
    return model


def pass_threshold(scores: np.ndarray, quantile: float) -> float:
    """A threshold that at least ``quantile`` of ``scores`` pass, half-way to the next score up.

    Half-way rather than on an observed score, so a film at the boundary does not flip with the
    last bits of another backend's arithmetic.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = int(np.ceil(quantile * (len(s) - 1)))
    return float(s[k] if k == len(s) - 1 else (s[k] + s[k + 1]) / 2)
