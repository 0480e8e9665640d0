"""What ``cxrtool explain`` is asked to do, kept apart from the torch code so ``--help`` reads its defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrtool.explain.audit import AuditCfg
from cxrtool.explain.composites import DEFAULT_COMPOSITE

#: what a heatmap explains: ``auto`` is ``log-odds`` for a multiclass model, ``logit`` for a multilabel one
EXPLAINED = ("auto", "log-odds", "logit")


@dataclass
class ExplainOptions:
    """What ``cxrtool explain`` does: composite, targets (``predicted``, ``all`` or a class name), the quantity
    explained (one of :data:`EXPLAINED`), batching, audit regions, and the torch device LRP runs on (resolved:
    ``cpu``, ``cuda`` or ``cuda:N``)."""

    composite: str = DEFAULT_COMPOSITE
    target: str = "predicted"
    explained: str = "auto"
    batch_size: int = 16
    audit: AuditCfg = field(default_factory=AuditCfg)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.explained not in EXPLAINED:
            raise ValueError(f"explained must be one of {', '.join(EXPLAINED)}; got {self.explained!r}")
