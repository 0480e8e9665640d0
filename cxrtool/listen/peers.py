"""Who may talk to ``cxrtool listen`` and where results go: ``AET@HOST`` and ``AET@HOST:PORT`` options."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from cxrtool.errors import CxrError


@dataclass(frozen=True)
class Peer:
    """An allowed calling application entity (``host`` resolved to an address once, at start)."""

    ae_title: str
    host: str


@dataclass(frozen=True)
class Destination:
    """Where SR + SC are C-STOREd."""

    ae_title: str
    host: str
    port: int


def _check_aet(aet: str, text: str) -> str:
    if not aet or len(aet) > 16 or "\\" in aet:
        raise CxrError(f"{text!r}: the AE title must be 1-16 characters")
    return aet


def _address(host: str, text: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        raise CxrError(f"{text!r}: cannot resolve host {host!r}") from None


def parse_peer(text: str) -> Peer:
    """``"ORTHANC@127.0.0.1"`` -> Peer (host resolved)."""
    aet, sep, host = text.rpartition("@")
    if not sep or not host:
        raise CxrError(f"--allow wants AET@HOST, not {text!r}")
    return Peer(_check_aet(aet, text), _address(host, text))


def parse_destination(text: str) -> Destination:
    """``"ORTHANC@127.0.0.1:4242"`` -> Destination."""
    aet, sep, rest = text.rpartition("@")
    host, colon, port = rest.rpartition(":")
    if not sep or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CxrError(f"--send-to wants AET@HOST:PORT, not {text!r}")
    return Destination(_check_aet(aet, text), host, int(port))


def is_allowed(ae_title: str, address: str, allow: Sequence[Peer]) -> bool:
    """With no ``--allow``, only loopback peers; otherwise exactly the listed AE title + address pairs."""
    if not allow:
        try:
            return ipaddress.ip_address(address).is_loopback
        except ValueError:
            return False
    return any(p.ae_title == ae_title.strip() and p.host == address for p in allow)
