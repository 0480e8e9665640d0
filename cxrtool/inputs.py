"""The input policy every command applies before decoding: which files it reads, what a file and a frame may be.

Kept below both :mod:`cxrtool.images` and :mod:`cxrtool.dicom` (each checks before it decodes),
so neither imports the other for it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from cxrtool.errors import CxrError, ImageLoadError, one_line

MAX_PIXELS_ENV = "CXRTOOL_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 50_000_000
"""Largest frame any command decodes (rows x columns x samples): a 7000x7000 film.  The biggest
chest detectors are about 4300x4300; a header asking for more is a bomb or a broken file, and
decoding it would take gigabytes (the pipeline works in float64)."""


def max_pixels() -> int:
    """The loader's pixel limit: ``$CXRTOOL_MAX_PIXELS`` if set, else :data:`DEFAULT_MAX_PIXELS`.

    Raises
    ------
    CxrError
        The variable is set but is not a positive integer (a usage error, not a bad file).
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise CxrError(
            f"${MAX_PIXELS_ENV} must be a positive whole number of pixels, not {os.environ[MAX_PIXELS_ENV]!r}"
        )
    return value


def pixel_limit_problem(rows: int, columns: int, samples: int = 1, *, limit: int | None = None) -> str | None:
    """Why a frame of this size must not be decoded (None when it may), before any decoding."""
    limit = max_pixels() if limit is None else limit
    if rows <= 0 or columns <= 0:
        return f"invalid image size {columns}x{rows}"
    values = rows * columns * max(1, samples)
    if values > limit:
        shape = f"{columns}x{rows}" + (f"x{samples}" if samples > 1 else "")
        return f"image too large: {shape} = {values:,} values, over the limit of {limit:,} (${MAX_PIXELS_ENV})"
    return None


def check_file(path: str | Path) -> int:
    """The input policy before a file is opened: a regular, non-empty file; returns its size.

    Symlink loops, dangling links, folders, FIFOs and devices (which would block or never end)
    become an :class:`ImageLoadError` naming the file.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageLoadError(path, "symbolic link loop") from None
        if exc.errno == errno.ENOENT and os.path.islink(path):
            raise ImageLoadError(path, "dangling symbolic link (its target does not exist)") from None
        raise ImageLoadError(path, exc.strerror or one_line(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        reason = "symbolic link to a folder (not followed inside a folder)" if os.path.islink(path) else "is a folder"
        raise ImageLoadError(path, reason)
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError(path, "not a regular file (FIFO, socket or device)")
    if st.st_size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")
    return st.st_size


def iter_input_files(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Expand files and folders (recursively, sorted, hidden files skipped) into candidate inputs.

    Folders yield every regular file: DICOMs often have no suffix, so the loader decides by content
    and a non-image becomes an error row rather than being silently ignored.  Symbolic links to
    folders inside a folder are not followed (no loops, no walking off to ``/``): they are yielded
    so :func:`check_file` names them; a link loop is yielded too and fails there.
    """
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in links)
                for name in sorted(files + links):
                    if not name.startswith(".") and not _is_sidecar(name):
                        yield Path(root) / name
        else:
            yield p


def _is_sidecar(name: str) -> bool:
    lower = name.lower()
    return lower.endswith((".csv", ".json", ".jsonl", ".md", ".txt", ".npy"))
