"""Exceptions shared by the library core; the CLI turns them into one-line messages."""

from __future__ import annotations

from pathlib import Path


class CxrError(Exception):
    """Base class for errors a user can act on (bad input, missing file, wrong option)."""


class ImageLoadError(CxrError):
    """An input file could not be turned into an image; names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """An exception's message on one line, bounded: what error rows and one-line errors show.

    An exception without a message is named by its type, so a reason is never empty.
    """
    text = " ".join(str(exc).split()) or (type(exc).__name__ if isinstance(exc, BaseException) else "")
    return text if len(text) <= limit else text[: limit - 3] + "..."
