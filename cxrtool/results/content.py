"""What a DICOM result says: one film's prediction, the model that made it, and its heatmap.

These small records are the only input the writers take, so the SR and SC builders do not care
whether the numbers came from ``predict`` rows, ``explain`` or the ``listen`` worker.  Optional
trust fields (out-of-distribution score and flag, calibration) are written when present and left
out of the report otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from cxrtool import __version__
from cxrtool.errors import CxrError

if TYPE_CHECKING:
    from cxrtool.modelfile import ModelCard


@dataclass(frozen=True)
class FilmPrediction:
    """One film's outcome in model class order.

    Attributes
    ----------
    class_names:
        The model's classes.
    probs:
        One probability per class.
    predicted:
        The decided label (argmax for multiclass; may be several ``;``-joined or empty for multilabel).
    ood_score:
        Out-of-distribution score (higher = more unusual), when the model has one.
    flag:
        ``ok``, ``out_of_distribution``, ``header:<reason>`` or ``view:lateral``, when the model checks its inputs.
    """

    class_names: tuple[str, ...]
    probs: tuple[float, ...]
    predicted: str
    ood_score: float | None = None
    flag: str | None = None

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.probs):
            raise CxrError(f"{len(self.probs)} probabilities for {len(self.class_names)} classes")

    @property
    def top(self) -> tuple[str, float]:
        """The most probable class and its probability (what the SC's text shows)."""
        i = int(np.argmax(self.probs))
        return self.class_names[i], float(self.probs[i])

    @classmethod
    def from_probs(
        cls, probs: Sequence[float], class_names: Sequence[str], predicted: str, **trust: object
    ) -> FilmPrediction:
        return cls(tuple(class_names), tuple(float(p) for p in probs), predicted, **trust)  # type: ignore[arg-type]

    @classmethod
    def from_row(cls, row: Mapping[str, object], class_names: Sequence[str]) -> FilmPrediction:
        """A ``predict`` output row (CSV ``p:<class>`` columns or JSONL ``probabilities``) -> prediction.

        ``ood_score`` and ``flag`` are read when the row has them (models with trust statistics).
        """
        probs_map = row.get("probabilities")
        if isinstance(probs_map, Mapping):
            probs = [float(probs_map[c]) for c in class_names]
        else:
            probs = [float(row[f"p:{c}"]) for c in class_names]  # type: ignore[arg-type]
        score = row.get("ood_score")
        score_value = float(score) if score not in (None, "") else None  # type: ignore[arg-type]
        if score_value is not None and math.isnan(score_value):
            score_value = None
        flag = row.get("flag")
        return cls.from_probs(
            probs, class_names, str(row.get("predicted") or ""), ood_score=score_value, flag=str(flag) if flag else None
        )


@dataclass(frozen=True)
class ModelInfo:
    """The algorithm identification written into every result.

    ``model_id`` is ``<file stem>@<sha256 prefix>`` (as in predict rows); ``parameters`` become
    TID 4019 *Algorithm Parameters* items (``backend=...``, ``calibrated=...``, ``composite=...``).
    """

    model_id: str
    backend: str
    calibrated: bool | None = None
    name: str = "cxrtool"
    version: str = __version__
    extra: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, card: ModelCard, model_id: str, backend: str, *, composite: str | None = None) -> ModelInfo:
        """The one way a run names its model in every result: whether the card's probabilities are
        temperature-scaled, the LRP composite of a heatmap, and the training data's shortcut warning."""
        from cxrtool.trust.shortcut import card_warning

        extra: tuple[tuple[str, str], ...] = (("composite", composite),) if composite else ()
        if warning := card_warning(card.dataset):
            extra += (("training_data", warning),)
        return cls(model_id, backend, calibrated="temperature" in card.calibration, extra=extra)

    @property
    def parameters(self) -> list[str]:
        params = [f"model={self.model_id}", f"backend={self.backend}"]
        if self.calibrated is not None:
            params.append(f"calibrated={'yes' if self.calibrated else 'no'}")
        params.extend(f"{k}={v}" for k, v in self.extra)
        return params


@dataclass(frozen=True)
class Heatmap:
    """A relevance map as ``explain`` computes it, with the film it explains.

    Attributes
    ----------
    film:
        The film as loaded (HxW float in [0, 1], full resolution, display orientation).
    relevance:
        Relevance at the model's input size (``input_size`` squared), as ``explain`` saves it.
    resize:
        The model's resize mode (``stretch``, ``letterbox``, ``center_crop``): how input pixels map to the film.
    target:
        Class the map explains.
    composite:
        LRP composite (or ``gradient``) that made it.
    """

    film: np.ndarray
    relevance: np.ndarray
    resize: str
    target: str
    composite: str
