"""Is this model input a frontal chest film?  Image-level view rules, the same for every backend.

A frontal (PA/AP) chest film has a bright vertical band in the middle (spine, mediastinum,
heart) between two dark lung fields, and is roughly mirror-symmetric; a lateral film has one dark
lung field in the middle with the spine at one edge and the sternum at the other.  Each rule
measures one such cue on the preprocessed input (the array every backend receives, so torch,
ONNX Runtime, OpenVINO, INT8 and TensorRT give the same verdict) and fails a film whose cue is
below its parameter.  The parameters are fixed, set on frontal films only (the 5th / 2nd
percentile of 1,000 adult NIH frontal thumbnails and the chest DICOMs of the shared data): no
labelled lateral film is needed, and a model trained on other frontal films keeps the same rules.

Cues are measured on each film standardised to zero mean and unit variance, so the input's
normalisation (mean/std, 1 or 3 channels) and the exposure do not matter.  Rules are registered
by name in :data:`RULES` (the way zennit names its rules); :func:`view_verdicts` applies
:data:`DEFAULT_RULES` to a batch.  The DICOM header's view (:func:`cxrtool.trust.gate.header_view`)
is the other source of ``view:lateral``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

VIEW_FLAG_PREFIX = "view:"
LATERAL = "lateral"


class ViewRule(Protocol):
    """A named image cue with parameters: ``measure`` per film, ``fails`` where it says "not frontal"."""

    name: ClassVar[str]
    verdict: ClassVar[str]

    def measure(self, films: np.ndarray) -> np.ndarray: ...

    def fails(self, films: np.ndarray) -> np.ndarray: ...


def standardise(inputs: np.ndarray) -> np.ndarray:
    """(N, C, H, W) model inputs -> (N, H, W) first channel, each film at zero mean and unit variance."""
    x = np.asarray(inputs, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"view rules need (N, C, H, W) inputs, not shape {x.shape}")
    g = x[:, 0]
    g = g - g.mean(axis=(1, 2), keepdims=True)
    return g / (g.std(axis=(1, 2), keepdims=True) + 1e-6)


def _span(lo: float, hi: float, n: int) -> slice:
    """Columns/rows ``lo``..``hi`` (shares of ``n``), at least one."""
    start = round(lo * n)
    return slice(start, max(start + 1, round(hi * n)))


@dataclass(frozen=True)
class MediastinumRule:
    """The middle column band must be brighter than the two lung bands beside it (frontal anatomy).

    ``measure``: mean of the standardised column profile (rows ``rows``) over the central band
    (``band`` either side of the middle) minus the mean of the two lung bands (``lungs`` from the
    middle, both sides), in units of the film's standard deviation.  Frontal films: median 0.83
    (NIH adults) to 1.24 (paediatric fixtures); laterals have their dark lung field there.
    """

    name: ClassVar[str] = "mediastinum"
    verdict: ClassVar[str] = LATERAL
    min_contrast: float = 0.25
    rows: tuple[float, float] = (0.15, 0.85)
    band: float = 0.06
    lungs: tuple[float, float] = (0.1, 0.3)

    def measure(self, films: np.ndarray) -> np.ndarray:
        h, w = films.shape[1:]
        profile = films[:, _span(*self.rows, h)].mean(1)
        centre = profile[:, _span(0.5 - self.band, 0.5 + self.band, w)].mean(1)
        left = profile[:, _span(0.5 - self.lungs[1], 0.5 - self.lungs[0], w)].mean(1)
        right = profile[:, _span(0.5 + self.lungs[0], 0.5 + self.lungs[1], w)].mean(1)
        return centre - (left + right) / 2

    def fails(self, films: np.ndarray) -> np.ndarray:
        return self.measure(films) < self.min_contrast


@dataclass(frozen=True)
class SymmetryRule:
    """A frontal film correlates with its own mirror image (rows ``rows``); a lateral one much less."""

    name: ClassVar[str] = "symmetry"
    verdict: ClassVar[str] = LATERAL
    min_correlation: float = -0.15
    rows: tuple[float, float] = (0.1, 0.8)

    def measure(self, films: np.ndarray) -> np.ndarray:
        part = films[:, _span(*self.rows, films.shape[1])]
        part = part - part.mean(axis=(1, 2), keepdims=True)
        mirrored = part[:, :, ::-1]
        num = (part * mirrored).sum(axis=(1, 2))
        return num / ((part**2).sum(axis=(1, 2)) + 1e-12)  # a mirror has the same variance

    def fails(self, films: np.ndarray) -> np.ndarray:
        return self.measure(films) < self.min_correlation


#: every rule by name
RULES: dict[str, type] = {r.name: r for r in (MediastinumRule, SymmetryRule)}
DEFAULT_RULES: tuple[ViewRule, ...] = (MediastinumRule(), SymmetryRule())


def make_rules(spec: Sequence[Mapping[str, Any]]) -> tuple[ViewRule, ...]:
    """Rules from ``[{"name": "mediastinum", "min_contrast": 0.3}, ...]``; ``ValueError`` names an unknown one."""
    out = []
    for item in spec:
        params = dict(item)
        name = params.pop("name", None)
        if name not in RULES:
            raise ValueError(f"unknown view rule {name!r} (known: {', '.join(sorted(RULES))})")
        out.append(RULES[name](**params))
    return tuple(out)


def view_verdicts(inputs: np.ndarray, rules: Sequence[ViewRule] = DEFAULT_RULES) -> list[str | None]:
    """Per model input of the batch (N, C, H, W): the first failing rule's verdict (``lateral``) or None.

    A film that is not finite (an error row elsewhere) gets no verdict.
    """
    x = np.asarray(inputs)
    finite = np.isfinite(x).all(axis=tuple(range(1, x.ndim)))
    films = standardise(np.nan_to_num(x))
    out: list[str | None] = [None] * len(x)
    for rule in rules:
        failed = rule.fails(films) & finite
        for i in np.flatnonzero(failed):
            out[i] = out[i] or rule.verdict
    return out


def view_flag(view: str) -> str:
    return f"{VIEW_FLAG_PREFIX}{view}"
