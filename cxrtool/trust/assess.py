"""The one function every command uses: (logits, features, header) -> (calibrated probabilities, ood_score, flag).

:class:`Trust` bundles what a model file says about trust (temperature, OOD statistics); it is
loaded once per model file with :func:`load_trust` and applied per batch with :meth:`Trust.assess`.
predict, explain, the DICOM results writer and the report all go through it, so a film gets the
same score and flag whichever backend or command produced it.

Flags, in order of precedence:

* ``header:<reason>``: the DICOM header says the film is not a frontal chest radiograph
  (:mod:`cxrtool.trust.gate`);
* ``view:lateral``: the header names a lateral view, or the image rules of :mod:`cxrtool.trust.view`
  (run by the caller on the model inputs, :func:`~cxrtool.trust.view.view_verdicts`) say so;
* ``out_of_distribution``: ``ood_score`` is above the model's threshold;
* ``ok``: neither (also for a model without OOD statistics: ``ood_score`` is then None).

A film whose calibrated probabilities or OOD score are not finite (NaN/Inf features, an overflow)
gets no flag at all: its :attr:`Assessment.error` says why, and every command reports it as an
error row, so a broken number can never read as ``ok``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import numpy as np

from cxrtool.errors import CxrError, one_line
from cxrtool.modelfile import TRUST_PREFIX, ModelCard
from cxrtool.modelfile.validate import check_card, check_trust_tensors
from cxrtool.trust.ood import OodModel
from cxrtool.trust.temperature import scaled_probs
from cxrtool.trust.view import view_flag

if TYPE_CHECKING:
    from cxrtool.trust.gate import HeaderVerdict

if TYPE_CHECKING:
    from cxrtool.modelfile.loaded import LoadedModel

FLAG_OK = "ok"
FLAG_OOD = "out_of_distribution"
HEADER_FLAG_PREFIX = "header:"

#: one line for a model file made before OOD statistics existed
NO_STATS_NOTICE = (
    "{model}: has no out-of-distribution statistics (ood_score stays empty and no film is flagged out of "
    "distribution); add them with `cxrtool calibrate {model} MANIFEST`"
)


def header_flag(reason: str) -> str:
    return f"{HEADER_FLAG_PREFIX}{reason}"


@dataclass(frozen=True)
class Assessment:
    """One film's verdict: calibrated probabilities, OOD score (None without statistics) and flag.

    ``error`` (then ``flag`` is empty) when a number is not finite: the film must be an error row.
    """

    probs: np.ndarray
    ood_score: float | None
    flag: str
    error: str | None = None

    @property
    def flagged(self) -> bool:
        return self.flag != FLAG_OK


@dataclass
class Trust:
    """A model file's temperature and OOD statistics (either may be absent)."""

    card: ModelCard
    temperature: float = 1.0
    ood: OodModel | None = None

    @classmethod
    def from_card(cls, card: ModelCard, tensors: dict[str, np.ndarray], *, source: str | Path = "model") -> Trust:
        """Checked first (:mod:`cxrtool.modelfile.validate`): a damaged file never reaches a score or a flag."""
        try:
            check_card(card.to_dict())
            if card.ood:
                check_trust_tensors(card.ood, tensors, TRUST_PREFIX, len(card.class_names))
        except ValueError as exc:
            refit = "refit them with `cxrtool calibrate`"
            raise CxrError(f"{source}: damaged trust statistics: {one_line(exc)}; {refit}") from None
        ood = None
        if card.ood:
            try:
                ood = OodModel.from_stored(card.ood, tensors, TRUST_PREFIX)
            except (ValueError, KeyError, TypeError) as exc:
                raise CxrError(
                    f"{source}: damaged OOD statistics ({exc}); refit them with `cxrtool calibrate`"
                ) from None
        return cls(card, float(card.calibration.get("temperature", 1.0)), ood)

    @classmethod
    def card_only(cls, card: ModelCard) -> Trust:
        """The card's temperature without OOD statistics (when the tensors are not at hand)."""
        import dataclasses

        return cls.from_card(dataclasses.replace(card, ood={}), {})

    @property
    def has_ood(self) -> bool:
        return self.ood is not None

    def probs(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities (the task's activation of ``logits / T``), float32."""
        return scaled_probs(self.card.task, logits, self.temperature).astype(np.float32)

    def scores(self, features: np.ndarray | None, n: int) -> list[float | None]:
        if self.ood is None or features is None:
            return [None] * n
        return [float(s) for s in self.ood.score(features)]

    def assess(
        self,
        logits: np.ndarray,
        features: np.ndarray | None,
        headers: Sequence[HeaderVerdict | None] | None = None,
        views: Sequence[str | None] | None = None,
    ) -> list[Assessment]:
        """Per film of the batch: calibrated probabilities, ``ood_score`` and ``flag``.

        ``features`` are the backend's ``run_features`` output (None when it has none: scores stay
        empty); ``headers`` one :func:`cxrtool.trust.gate.header_verdict` per film (None: not a
        DICOM); ``views`` one :func:`cxrtool.trust.view.view_verdicts` entry per film (None: frontal).
        """
        logits = np.asarray(logits)
        n = len(logits)
        probs = self.probs(logits)
        scores = self.scores(features, n)
        headers = list(headers) if headers is not None else [None] * n
        views = list(views) if views is not None else [None] * n
        out = []
        for p, s, h, v in zip(probs, scores, headers, views):
            if not np.isfinite(p).all():
                out.append(Assessment(p, None, "", "calibrated probabilities are not finite"))
                continue
            if s is not None and not np.isfinite(s):
                why = f"ood_score is not finite ({s}); the film's features or the model's OOD statistics are broken"
                out.append(Assessment(p, None, "", why))
                continue
            view = (h.view if h is not None else None) or v
            if h is not None and h.reason:
                flag = header_flag(h.reason)
            elif view:
                flag = view_flag(view)
            elif s is not None and self.ood is not None and s > self.ood.threshold:
                flag = FLAG_OOD
            else:
                flag = FLAG_OK
            out.append(Assessment(p, s, flag))
        return out


def load_trust(model: str | Path | LoadedModel, card: ModelCard | None = None) -> Trust:
    """The trust statistics of a model file (checkpoint, ONNX export, INT8 IR or TensorRT engine).

    Given a :class:`~cxrtool.modelfile.loaded.LoadedModel`, they come from its bytes and are built once
    per loaded model (a ``listen`` lifetime assesses every film with the same object); given a path,
    ``card`` is the file's card and the file is read for them.
    """
    from cxrtool.trust.store import model_tensors, stored_tensors

    if isinstance(model, (str, Path)):
        if card is None:
            raise TypeError("load_trust(path) needs the file's card")
        return Trust.from_card(card, stored_tensors(model) if card.ood else {}, source=model)
    if model not in _LOADED:
        _LOADED[model] = Trust.from_card(model.card, model_tensors(model) if model.card.ood else {}, source=model.path)
    return _LOADED[model]


#: each loaded model's statistics, built on first use and dropped with the model
_LOADED: WeakKeyDictionary[LoadedModel, Trust] = WeakKeyDictionary()
