"""What ``cxrtool explain`` is asked to do, kept apart from the torch code so ``--help`` reads its defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cxrtool.explain.composites import DEFAULT_COMPOSITE

if TYPE_CHECKING:
    import numpy as np

#: what a heatmap explains: ``auto`` is ``log-odds`` for a multiclass model, ``logit`` for a multilabel one
EXPLAINED = ("auto", "log-odds", "logit")


@dataclass(frozen=True)
class AuditCfg:
    """Regions as fractions of the input side: ``border`` band width, lung box ``(left, top, right, bottom)``."""

    border: float = 0.08
    lung_box: tuple[float, float, float, float] = (0.12, 0.08, 0.88, 0.88)

    def __post_init__(self) -> None:
        left, top, right, bottom = self.lung_box
        if not 0 < self.border < 0.5:
            raise ValueError(f"border must be in (0, 0.5), not {self.border}")
        if not (0 <= left < right <= 1 and 0 <= top < bottom <= 1):
            raise ValueError(f"lung_box must be (left, top, right, bottom) fractions, not {self.lung_box}")

    def masks(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Boolean ``(border, outside_lung)`` masks for an ``h`` x ``w`` heatmap."""
        import numpy as np

        bh, bw = max(1, round(self.border * h)), max(1, round(self.border * w))
        border = np.ones((h, w), dtype=bool)
        border[bh : h - bh, bw : w - bw] = False
        left, top, right, bottom = self.lung_box
        outside = np.ones((h, w), dtype=bool)
        outside[round(top * h) : round(bottom * h), round(left * w) : round(right * w)] = False
        return border, outside


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
