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
