"""How the Storage SCP meets its peers: accepted SOP classes, AE title checks, the association limit, TLS.

Everything refused here is refused *at association* with a real A-ASSOCIATE-RJ, so a sender learns
why (PS3.8 9.3.4): pynetdicom's own ``require_calling_aet``/``require_called_aet`` checks give
"calling/called AE title not recognised", its ``maximum_associations`` "local limit exceeded".  The
host half of an ``--allow AET@HOST`` pair is checked by :func:`reject_unless_allowed`.  Only image
storage classes the model can read are offered, so an SR or a presentation state is refused in
negotiation instead of ending in ``failed/``.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtool.errors import CxrError
from cxrtool.listen.peers import Peer, is_allowed

LOG = logging.getLogger("cxrtool.listen")

#: Image storage SOP classes of projection radiographs and secondary captures (what a chest film arrives as)
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "CR Image",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image (for presentation)",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image (for processing)",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image",
}

#: A-ASSOCIATE-RJ (result, source, reason): rejected-permanent, service-user, calling AE title not recognised
REJECT_CALLING_AET = (0x01, 0x01, 0x03)


@dataclass(frozen=True)
class TlsFiles:
    """``--tls-cert/--tls-key`` (PEM) and, to require client certificates, ``--tls-ca``."""

    cert: Path
    key: Path
    ca: Path | None = None


def server_ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """A TLS >= 1.2 server context; with ``ca`` every client must present a certificate signed by it.

    Raises
    ------
    CxrError
        A file is missing or not a usable PEM certificate/key (named, one line).
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise CxrError(f"{tls.cert} / {tls.key}: cannot use this TLS certificate and key ({_reason(exc)})") from None
    if tls.ca is not None:
        try:
            context.load_verify_locations(cafile=tls.ca)
        except (OSError, ssl.SSLError) as exc:
            raise CxrError(f"{tls.ca}: cannot use this CA file ({_reason(exc)})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or type(exc).__name__


def build_ae(
    ae_title: str, allow: Sequence[Peer], *, max_associations: int, check_called_aet: bool, accept_non_image: bool
) -> Any:
    """The pynetdicom AE for ``listen``: contexts, AE title checks and the association limit set."""
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=ae_title)
    storage = [c.abstract_syntax for c in AllStoragePresentationContexts]
    for uid in storage if accept_non_image else [u for u in storage if u in IMAGE_SOP_CLASSES]:
        ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_pdu_size = 0
    ae.maximum_associations = max_associations
    ae.require_called_aet = check_called_aet
    ae.require_calling_aet = sorted({p.ae_title for p in allow})
    return ae


def reject_unless_allowed(event: Any, allow: Sequence[Peer]) -> None:
    """EVT_REQUESTED: an A-ASSOCIATE-RJ for a calling host that is not allowed.

    A title not in ``--allow`` is left to pynetdicom's own ``require_calling_aet`` check.  After
    the reject the handler waits (``Association.kill``, as pynetdicom's own reject path does) until
    the reject is on the wire and the peer has closed, instead of letting the server drop the
    socket under it (which the peer would see as an abort).
    """
    primitive = event.assoc.requestor.primitive
    calling = str(primitive.calling_ae_title).strip()
    address = event.assoc.requestor.address
    if is_allowed(calling, address, allow) or (allow and calling not in {p.ae_title for p in allow}):
        return
    LOG.warning("association refused: calling AE %r at %s is not allowed", calling, address)
    event.assoc.acse.send_reject(*REJECT_CALLING_AET)
    event.assoc.kill()
