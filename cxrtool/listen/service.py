"""``cxrtool listen``: a DICOM Storage SCP (pynetdicom) that answers every received film with an SR + SC.

The event handlers only check the peer, spool and wake the worker; everything slow happens in the
:class:`~cxrtool.listen.worker.Worker` thread, and sending in the :class:`~cxrtool.listen.outbox.Outbox`
thread.  Security defaults: bound to 127.0.0.1, and with no ``--allow`` only loopback peers are
accepted; with ``--allow`` exactly the listed AE title + host pairs; the called AE title must be
ours; only image storage classes are accepted (:mod:`cxrtool.listen.scp`).  The output folder is
owned by one listener at a time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtool.listen.logs import quiet_library_loggers
from cxrtool.listen.outbox import DimseSender, Outbox, Sender
from cxrtool.listen.peers import Destination, Peer
from cxrtool.listen.scp import (
    IMAGE_SOP_CLASSES,
    TlsFiles,
    build_ae,
    reject_unless_allowed,
    server_ssl_context,
)
from cxrtool.listen.spool import Spool, uid_key
from cxrtool.listen.worker import Worker
from cxrtool.locks import owned_output

if TYPE_CHECKING:
    from cxrtool.dicomweb.destination import StowDestination

LOG = logging.getLogger("cxrtool.listen")

#: C-STORE statuses (PS3.4 B.2.3)
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC210


@dataclass(frozen=True)
class ListenConfig:
    """Everything ``cxrtool listen`` is told (defaults: nothing open beyond this machine)."""

    model: Path
    out: Path
    port: int = 11112
    ae_title: str = "CXRTOOL"
    bind: str = "127.0.0.1"
    allow: Sequence[Peer] = field(default_factory=tuple)
    send_to: Destination | StowDestination | None = None  # C-STORE, or STOW-RS (cxrtool.dicomweb)
    max_queue: int = 64
    backend: str = "auto"
    composite: str | None = None
    max_backoff: float = 30.0  # the outbox's retry ceiling
    max_retry: float = 300.0  # a film's retry ceiling after a transient failure (disk full...)
    max_associations: int = 10
    check_called_aet: bool = True
    accept_non_image: bool = False
    tls: TlsFiles | None = None
    retry_failed: bool = False


class Listener:
    """The running service: server, worker and sender; :meth:`stop` ends all three cleanly."""

    def __init__(self, config: ListenConfig):
        self.config = config
        # a bad TLS file is a usage error before any work
        self._ssl = server_ssl_context(config.tls) if config.tls else None
        self._owned = contextlib.ExitStack()
        self._owned.enter_context(owned_output(config.out))  # two listeners on one folder would analyse films twice
        try:
            self.spool = Spool(config.out / "spool")
            self.stale_removed = len(self.spool.remove_stale())  # temp files of a run that died mid-write
            self.retried = self.spool.retry_failed() if config.retry_failed else 0
            sender = _sender(config)
            self.outbox = Outbox(config.out / "outbox", sender, max_backoff=config.max_backoff) if sender else None
            self.worker = Worker(
                config.model,
                config.out,
                self.spool,
                self.outbox,
                backend=config.backend,
                composite=config.composite,
                max_retry=config.max_retry,
            )
        except BaseException:
            self._owned.close()
            raise
        self.received = 0
        self.ignored = 0
        self._server = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        return self._server.server_address[1] if self._server else self.config.port

    def start(self) -> Listener:
        from pynetdicom import evt

        quiet_library_loggers()
        c = self.config
        ae = build_ae(
            c.ae_title,
            c.allow,
            max_associations=c.max_associations,
            check_called_aet=c.check_called_aet,
            accept_non_image=c.accept_non_image,
        )
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
        ]
        if self.outbox is not None:
            self.outbox.start()
        self.worker.start()  # films left from a previous run are processed first
        self._server = ae.start_server((c.bind, c.port), block=False, evt_handlers=handlers, ssl_context=self._ssl)
        LOG.info(
            "listening as %s on %s:%d%s (%d film(s) in the spool; %d moved back from failed/; "
            "%d stale temp file(s) removed)",
            c.ae_title,
            c.bind,
            self.port,
            " with TLS" if self._ssl else "",
            len(self.spool),
            self.retried,
            self.stale_removed,
        )
        return self

    def stop(self) -> None:
        """Stop accepting, finish the film in progress, stop the sender (unsent results stay in outbox/)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.worker.stop()
        if self.outbox is not None:
            self.outbox.stop()
        self._owned.close()

    # ------------------------------------------------------------ handlers: check, spool, wake

    def _on_requested(self, event) -> None:
        reject_unless_allowed(event, self.config.allow)

    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_store(self, event) -> int:
        from pydicom.uid import UID

        uid = str(event.request.AffectedSOPInstanceUID or "")
        if not uid:
            LOG.warning("C-STORE without an Affected SOP Instance UID refused")
            return CANNOT_UNDERSTAND
        sop_class = str(event.request.AffectedSOPClassUID or "")
        if sop_class not in IMAGE_SOP_CLASSES:  # only reachable with accept_non_image
            self.ignored += 1
            LOG.info(
                "object %s: %s is not an image the model reads; acknowledged and ignored",
                uid_key(uid),
                UID(sop_class).name,
            )
            return SUCCESS
        with self._lock:
            if len(self.spool) >= self.config.max_queue:
                LOG.warning("spool full (%d films): C-STORE refused, the sender may retry", self.config.max_queue)
                return OUT_OF_RESOURCES
            try:
                self.spool.put(uid, event.encoded_dataset(include_meta=True))
            except OSError as exc:
                LOG.error("cannot spool a received film: %s", exc)
                return OUT_OF_RESOURCES
            self.received += 1
        self.worker.wake.set()
        return SUCCESS


def _sender(config: ListenConfig) -> Sender | None:
    """How results travel on: C-STORE to an ``AET@HOST:PORT``, or a ready STOW-RS destination
    (``--send-to dicomweb+``).
    """
    if config.send_to is None:
        return None
    if isinstance(config.send_to, Destination):
        return DimseSender(config.send_to, config.ae_title)
    return config.send_to  # a StowDestination is itself a Sender (describe, send -> one outcome per file)
