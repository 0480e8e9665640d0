"""Results waiting to be sent to ``--send-to``, kept on disk until the destination accepts them.

A destination that is down costs nothing but time: the files stay in ``outbox/`` and the sender
retries with exponential backoff (1 s doubling to ``max_backoff``); a restart sends what is left.
How files travel is a :class:`Sender` (:class:`DimseSender`: C-STORE to ``AET@HOST:PORT``), so
another kind of destination only needs its own ``send``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from cxrtool.fsutil import remove_stale_temps
from cxrtool.listen.peers import Destination

LOG = logging.getLogger("cxrtool.listen")


class Sender(Protocol):
    """One kind of destination: sends files, says which ones it accepted."""

    def describe(self) -> str:
        """Where files go, for log lines (no credentials)."""

    def send(self, files: list[Path]) -> list[bool]:
        """Send ``files``; one outcome per file (True: accepted).  All False when unreachable."""


class Outbox:
    """A folder of result files to send, and the thread that sends them."""

    def __init__(self, folder: str | Path, sender: Sender, *, max_backoff: float = 30.0, first_backoff: float = 1.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder)  # links cut short by a run that died
        self.sender = sender
        self.max_backoff = max_backoff
        self.first_backoff = first_backoff
        self.sent = 0
        self.failures = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, files: list[Path]) -> None:
        """Queue result files (hard links where possible: no second copy of the data)."""
        for f in files:
            dst = self.folder / f.name
            if dst.exists():
                continue
            tmp = self.folder / f".{f.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
            try:
                try:
                    os.link(f, tmp)
                except OSError:
                    shutil.copyfile(f, tmp)
                os.replace(tmp, dst)
            finally:
                tmp.unlink(missing_ok=True)  # a copy cut short by a full disk leaves nothing behind
        self._wake.set()

    def withdraw(self, names: Iterable[str]) -> None:
        """Drop queued files that were replaced before they were sent."""
        for name in names:
            (self.folder / name).unlink(missing_ok=True)

    def pending(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.suffix == ".dcm" and not p.name.startswith("."))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cxrtool-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = self.first_backoff
        while not self._stop.is_set():
            files = self.pending()
            if not files:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            outcomes = self.sender.send(files)
            for f, accepted in zip(files, outcomes):
                if accepted:
                    f.unlink(missing_ok=True)
                    self.sent += 1
            if all(outcomes):
                delay = self.first_backoff
                continue
            self.failures += 1
            LOG.warning(
                "destination %s unavailable; %d result(s) queued, retrying in %.0f s",
                self.sender.describe(),
                len(self.pending()),
                delay,
            )
            self._stop.wait(delay)
            delay = min(delay * 2, self.max_backoff)


class DimseSender:
    """C-STORE to ``AET@HOST:PORT`` over one association per batch."""

    def __init__(self, destination: Destination, ae_title: str):
        self.destination, self.ae_title = destination, ae_title

    def describe(self) -> str:
        return f"{self.destination.ae_title}@{self.destination.host}:{self.destination.port}"

    def send(self, files: list[Path]) -> list[bool]:
        """Stops at the first refusal (the rest go with the next try)."""
        from pydicom import dcmread
        from pynetdicom import AE

        outcomes = {f: False for f in files}
        datasets = []
        for f in files:
            try:
                datasets.append((f, dcmread(f)))
            except Exception as exc:  # a file we wrote ourselves should always read; never loop on it
                LOG.error("outbox file %s unreadable (%s); dropped", f.name, type(exc).__name__)
                f.unlink(missing_ok=True)
                outcomes[f] = True
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for sop_class, syntax in {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for _, ds in datasets}:
            ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate(self.destination.host, self.destination.port, ae_title=self.destination.ae_title)
        if not assoc.is_established:
            return [outcomes[f] for f in files]
        try:
            for f, ds in datasets:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None or not (code == 0x0000 or 0xB000 <= code <= 0xBFFF):
                    shown = "none" if code is None else f"0x{code:04X}"
                    LOG.warning("destination refused %s (status %s)", f.name, shown)
                    break
                outcomes[f] = True
        finally:
            assoc.release()
        return [outcomes[f] for f in files]
