"""What a long export step reports while it runs: films done of a known total, per counted stage.

The core calls an :data:`OnProgress` callback; the CLI renders it (a bar on a terminal, plain lines
when piped).  A new ``stage`` text starts a new count from 0, so a caller can tell NNCF's second walk
over the calibration films (``pass 2``) from the first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ExportProgress:
    """``done`` of ``total`` films through ``stage`` (films that fail to load count as done)."""

    stage: str
    done: int
    total: int


OnProgress = Callable[[ExportProgress], None]


def counter(on_progress: OnProgress | None, stage: str, total: int) -> Callable[[int], None]:
    """``report(done)`` for one stage: emits :class:`ExportProgress`, or does nothing without a callback."""
    if on_progress is None:
        return lambda _done: None
    return lambda done: on_progress(ExportProgress(stage, done, total))
