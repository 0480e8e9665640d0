"""Stopping a run cleanly: SIGINT/SIGTERM finish the current step and save; a second Ctrl-C aborts."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


class StopRequest:
    """Asks the loop to stop after the current step (set by SIGINT/SIGTERM, or by code)."""

    def __init__(self) -> None:
        self.requested = False

    def set(self) -> None:
        self.requested = True


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop``; a second SIGINT raises KeyboardInterrupt.  Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
