"""``cxrtool listen``: DICOM Storage SCP -> spool -> worker (predict + explain core) -> SR + SC -> outbox."""

from cxrtool.listen.peers import Destination, Peer, parse_destination, parse_peer
from cxrtool.listen.scp import TlsFiles
from cxrtool.listen.service import ListenConfig, Listener

__all__ = ["Destination", "ListenConfig", "Listener", "Peer", "TlsFiles", "parse_destination", "parse_peer"]
