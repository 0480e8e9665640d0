"""What ``cxrtool explain`` is asked to do, kept apart from the torch code so ``--help`` reads its defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field

from cxrtool.explain.audit import AuditCfg
from cxrtool.explain.composites import DEFAULT_COMPOSITE


@dataclass
class ExplainOptions:
    """What ``cxrtool explain`` does: composite, targets (``predicted``, ``all`` or a class name), batching, audit regions,
    and the torch device LRP runs on (resolved: ``cpu``, ``cuda`` or ``cuda:N``)."""

    composite: str = DEFAULT_COMPOSITE
    target: str = "predicted"
    batch_size: int = 16
    audit: AuditCfg = field(default_factory=AuditCfg)
    device: str = "cpu"
