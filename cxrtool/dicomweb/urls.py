"""``dicomweb+https://host/dicom-web/studies/UID[/series/UID[/instances/UID]]``: what cxrtool reads and writes.

The ``dicomweb+`` prefix tells a DICOMweb address from a file name on the command line; the part
before ``/studies/`` is the service root (Orthanc: ``/dicom-web``).  Credentials never go in the
address (they would sit in shell history and process lists), so a ``user:password@`` part is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from cxrtool.errors import CxrError

SCHEME_PREFIX = "dicomweb+"
_UID = r"[0-9]+(?:\.[0-9]+)*"
_PATH = re.compile(
    rf"(?P<root>.*?)(?:/studies/(?P<study>{_UID})(?:/series/(?P<series>{_UID})"
    rf"(?:/instances/(?P<instance>{_UID}))?)?)?/?"
)


def is_dicomweb_url(text: object) -> bool:
    """True for text that starts with ``dicomweb+http://`` or ``dicomweb+https://``."""
    return isinstance(text, str) and text.lower().startswith((SCHEME_PREFIX + "http://", SCHEME_PREFIX + "https://"))


@dataclass(frozen=True)
class DicomwebUrl:
    """A parsed address: the service root (plain ``http(s)://``) and the UIDs below it, if any."""

    root: str
    study: str | None = None
    series: str | None = None
    instance: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.root).hostname or ""

    def instance_url(self, study: str, series: str, instance: str) -> str:
        """The ``dicomweb+`` address of one instance: how a predictions row names it (UIDs only, no PHI)."""
        return f"{SCHEME_PREFIX}{self.root}/studies/{study}/series/{series}/instances/{instance}"

    def __str__(self) -> str:
        text = SCHEME_PREFIX + self.root
        for level, uid in (("studies", self.study), ("series", self.series), ("instances", self.instance)):
            if uid:
                text += f"/{level}/{uid}"
        return text


def parse_dicomweb_url(text: str) -> DicomwebUrl:
    """Split a ``dicomweb+http(s)://`` address into service root and UIDs.

    Raises
    ------
    CxrError
        Not such an address, credentials in it, a query or fragment, or a path that is not
        ``…/studies/UID[/series/UID[/instances/UID]]`` below the root.
    """
    if not is_dicomweb_url(text):
        raise CxrError(f"{text!r}: not a DICOMweb address (dicomweb+http://… or dicomweb+https://…)")
    parts = urlsplit(text[len(SCHEME_PREFIX) :])
    if parts.username is not None or parts.password is not None:
        raise CxrError(
            "a DICOMweb address must not carry credentials; use --token-env, --token-file or --basic-auth-file"
        )
    if parts.query or parts.fragment:
        raise CxrError(f"{text}: no query or fragment in a DICOMweb address (a QIDO query goes in --qido)")
    if not parts.hostname:
        raise CxrError(f"{text}: no host in the DICOMweb address")
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise CxrError(f"{text}: the port is not a number") from None
    match = _PATH.fullmatch(parts.path)
    root_path = match["root"] if match else ""
    if not match or "/studies" in root_path or "/series" in root_path or "/instances" in root_path:
        raise CxrError(f"{text}: expected …/studies/UID[/series/UID[/instances/UID]] below the service root")
    root = f"{parts.scheme}://{parts.netloc}{root_path}".rstrip("/")
    return DicomwebUrl(root, match["study"], match["series"], match["instance"])
