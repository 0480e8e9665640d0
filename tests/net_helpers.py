"""Loopback helpers shared by the tests that start real servers (Orthanc, pynetdicom peers)."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 60.0, step: float = 0.1) -> bool:
    """Poll ``predicate`` until true or ``timeout`` (every loop in these tests is bounded)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())
