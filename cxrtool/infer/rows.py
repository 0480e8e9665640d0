"""What one prediction row holds and which columns it fills: the one place both writers read.

To add a per-row output (an OOD score, a flag, calibrated probabilities): give
:class:`Prediction` an optional field, and add it to :meth:`RowFormat.columns` and
:meth:`RowFormat.record` in the same place; the CSV and JSONL writers follow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cxrtool.task import Task


@dataclass
class Prediction:
    """One input's outcome: probabilities, or the reason it failed (then every other field is empty)."""

    path: str
    probs: np.ndarray | None = None  # calibrated (the model card's temperature, cxrtool.trust)
    error: str | None = None
    ood_score: float | None = None  # None: the model has no OOD statistics
    flag: str | None = None  # ok | out_of_distribution | header:<reason> | view:lateral (cxrtool.trust.assess)


#: the run-level fields every row repeats, so each row names what made it
META_FIELDS = ("model_id", "backend", "device")


@dataclass(frozen=True)
class RowFormat:
    """A file's column layout for one model: classes, decision rule and run metadata."""

    class_names: list[str]
    task: Task
    meta: dict[str, str]
    reject_ood: bool = False  # flagged rows keep their probabilities but get no predicted class

    def columns(self) -> list[str]:
        """CSV header: ``probabilities`` is spread over one ``p:<class>`` column per class."""
        return ["path", "predicted", *[f"p:{c}" for c in self.class_names], "ood_score", "flag", *META_FIELDS, "error"]

    def record(self, row: Prediction) -> dict[str, Any]:
        """The row as plain values (None where empty), in column order; JSONL writes exactly this."""
        ok = row.probs is not None
        decide = ok and not (self.reject_ood and row.flag not in (None, "ok"))
        return {
            "path": row.path,
            "predicted": self.task.decide(row.probs, self.class_names) if decide else None,
            "probabilities": {c: float(p) for c, p in zip(self.class_names, row.probs)} if ok else None,
            "ood_score": row.ood_score if ok else None,
            "flag": row.flag if ok else None,
            **{k: self.meta[k] for k in META_FIELDS},
            "error": None if ok else row.error,
        }

    def flat(self, record: dict[str, Any]) -> dict[str, Any]:
        """A :meth:`record` with ``probabilities`` spread into ``p:<class>`` keys (CSV)."""
        probs = record.get("probabilities") or {}
        out = {k: v for k, v in record.items() if k != "probabilities"}
        out.update({f"p:{c}": probs.get(c) for c in self.class_names})
        return out
