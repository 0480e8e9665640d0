"""``cxrtool listen``: a DICOM Storage SCP (pynetdicom) that answers every received film with an SR + SC.

The event handlers only check the peer, spool and wake the worker; everything slow happens in the
:class:`~cxrtool.listen.worker.Worker` thread, and sending in the :class:`~cxrtool.listen.outbox.Outbox`
thread.  Security defaults: bound to 127.0.0.1, and with no ``--allow`` only loopback peers are
accepted; with ``--allow`` exactly the listed AE title + host pairs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtool.listen.outbox import Outbox
from cxrtool.listen.peers import Destination, Peer, is_allowed
from cxrtool.listen.spool import Spool
from cxrtool.listen.worker import Worker

if TYPE_CHECKING:
    from cxrtool.dicomweb.destination import StowDestination

LOG = logging.getLogger("cxrtool.listen")

#: C-STORE statuses (PS3.4 B.2.3)
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND, NOT_AUTHORISED = 0x0000, 0xA700, 0xC210, 0x0124


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
    max_backoff: float = 30.0


class Listener:
    """The running service: server, worker and sender; :meth:`stop` ends all three cleanly."""

    def __init__(self, config: ListenConfig):
        self.config = config
        self.spool = Spool(config.out / "spool")
        self.outbox = (
            Outbox(config.out / "outbox", config.send_to, config.ae_title, max_backoff=config.max_backoff)
            if config.send_to else None
        )
        self.worker = Worker(config.model, config.out, self.spool, self.outbox, backend=config.backend, composite=config.composite)
        self.received = 0
        self._server = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The bound port (useful with ``port=0``)."""
        return self._server.server_address[1] if self._server else self.config.port

    def start(self) -> Listener:
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_ECHO, self._on_echo), (evt.EVT_C_STORE, self._on_store)]
        self._ae = ae
        if self.outbox is not None:
            self.outbox.start()
        self.worker.start()  # films left from a previous run are processed first
        self._server = ae.start_server((self.config.bind, self.config.port), block=False, evt_handlers=handlers)
        LOG.info("listening as %s on %s:%d (%d film(s) left in the spool)", self.config.ae_title, self.config.bind, self.port, len(self.spool))
        return self

    def stop(self) -> None:
        """Stop accepting, finish the film in progress, stop the sender (unsent results stay in outbox/)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.worker.stop()
        if self.outbox is not None:
            self.outbox.stop()

    # ------------------------------------------------------------ handlers: check, spool, wake

    def _on_requested(self, event) -> None:
        primitive = event.assoc.requestor.primitive
        calling = str(primitive.calling_ae_title).strip()
        address = event.assoc.requestor.address
        if not is_allowed(calling, address, self.config.allow):
            LOG.warning("rejected association from %s at %s (not allowed)", calling, address)
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE not recognised

    def _on_echo(self, event) -> int:
        return SUCCESS

    def _on_store(self, event) -> int:
        uid = str(event.request.AffectedSOPInstanceUID or "")
        if not uid:
            LOG.error("C-STORE without an Affected SOP Instance UID refused")
            return CANNOT_UNDERSTAND
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
