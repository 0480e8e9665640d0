"""No header value in the listener's log: library loggers quietened and their lines redacted.

pynetdicom and highdicom log UIDs and dataset values at INFO, and at WARNING/ERROR they quote the
offending value (a 65+ character SOP Instance UID comes with a full traceback).  At start the
listener sets their loggers to WARNING and adds :class:`Redactor` to each of them (and to pydicom's):
UID-like numbers and quoted values become a short hash (the same value, the same hash, so lines
can still be matched), DICOM attribute names in quotes stay readable, and a traceback shrinks to
its exception type.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re

#: library loggers that log header values or tracebacks
LIBRARIES = ("pynetdicom", "highdicom", "pydicom")
_UID = re.compile(r"(?<![\w.])\d+(?:\.\d+){4,}(?![\w.])")  # 5+ components: an IPv4 address stays readable
_QUOTED = re.compile(r"'([^'\n]*)'|\"([^\"\n]*)\"")


def value_hash(text: str) -> str:
    """``#`` and 10 hex digits of SHA-256: names a value without showing it."""
    return "#" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:10]


@functools.cache
def _attribute_names() -> frozenset[str]:
    from pydicom.datadict import DicomDictionary

    return frozenset(name for entry in DicomDictionary.values() for name in (entry[2], entry[4]) if name)


def redact(text: str) -> str:
    """``text`` with UID-like tokens and quoted values replaced by their hash (attribute names kept)."""

    def quoted(match: re.Match) -> str:
        value = match[1] if match[1] is not None else match[2]
        return match[0] if value in _attribute_names() else f"<{value_hash(value)}>"

    return _UID.sub(lambda m: f"<{value_hash(m[0])}>", _QUOTED.sub(quoted, text))


class Redactor(logging.Filter):
    """Rewrites a library's record in place: redacted one-line message, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed library record: keep only its template
            message = str(record.msg)
        if record.exc_info and record.exc_info[0] is not None:
            message += f" ({record.exc_info[0].__name__})"
        record.msg, record.args = redact(" ".join(message.split())), None
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def quiet_library_loggers() -> None:
    """pynetdicom and highdicom at WARNING or above, and every library logger redacted (idempotent)."""
    import highdicom  # noqa: F401  (their module loggers exist once imported)
    import pynetdicom  # noqa: F401

    for name in LIBRARIES[:2]:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    for name in [n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in LIBRARIES]:
        logger = logging.getLogger(name)
        if not any(isinstance(f, Redactor) for f in logger.filters):
            logger.addFilter(Redactor())
