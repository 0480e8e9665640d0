"""Results waiting to be C-STOREd to ``--send-to``, kept on disk until the destination accepts them.

A destination that is down costs nothing but time: the files stay in ``outbox/`` and the sender
retries with exponential backoff (1 s doubling to ``max_backoff``); a restart sends what is left.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from cxrtool.listen.peers import Destination

LOG = logging.getLogger("cxrtool.listen")


class Outbox:
    """A folder of result files to send, and the thread that sends them."""

    def __init__(self, folder: str | Path, destination: Destination, ae_title: str, *, max_backoff: float = 30.0,
                 first_backoff: float = 1.0):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.destination = destination
        self.ae_title = ae_title
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
            tmp = self.folder / f".{f.name}.tmp"
            try:
                os.link(f, tmp)
            except OSError:
                shutil.copyfile(f, tmp)
            os.replace(tmp, dst)
        self._wake.set()

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
            if send_files(files, self.destination, self.ae_title, on_sent=self._sent):
                delay = self.first_backoff
                continue
            self.failures += 1
            LOG.warning("destination %s@%s:%d unavailable; %d result(s) queued, retrying in %.0f s",
                        self.destination.ae_title, self.destination.host, self.destination.port, len(self.pending()), delay)
            self._stop.wait(delay)
            delay = min(delay * 2, self.max_backoff)

    def _sent(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.sent += 1


def send_files(files: list[Path], destination: Destination, ae_title: str, *, on_sent: Callable[[Path], None]) -> bool:
    """C-STORE ``files`` over one association; ``on_sent`` for each accepted one. False when the destination fails."""
    from pydicom import dcmread
    from pynetdicom import AE

    datasets = []
    for f in files:
        try:
            datasets.append((f, dcmread(f)))
        except Exception as exc:  # a file we wrote ourselves should always read; never loop on it
            LOG.error("outbox file %s unreadable (%s); dropped", f.name, exc)
            f.unlink(missing_ok=True)
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class, syntax in {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for _, ds in datasets}:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        return False
    ok = True
    try:
        for f, ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is not None and (code == 0x0000 or 0xB000 <= code <= 0xBFFF):
                on_sent(f)
            else:
                ok = False
                LOG.warning("destination refused %s (status %s)", f.name, "none" if code is None else f"0x{code:04X}")
                break
    finally:
        assoc.release()
    return ok
