"""The shared loader: any supported file (DICOM by content, or a raster image) -> grey float32 in [0, 1].

Every command that reads films (prep, train, predict, explain) goes through :func:`load_image`,
so a DICOM is shown to the network exactly as ``prep dicom`` would render it, and every command
has the same input policy: :func:`check_file` (regular, non-empty, no symlink loop) and
:func:`max_pixels` (decompression bombs and absurd headers become an :class:`ImageLoadError`).
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxrtool.errors import CxrError, ImageLoadError, one_line

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})

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
        raise CxrError(f"${MAX_PIXELS_ENV} must be a positive whole number of pixels, not {os.environ[MAX_PIXELS_ENV]!r}")
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


def load_image(path: str | Path, *, window: str = "dicom", frame: int = 0, limit: int | None = None) -> np.ndarray:
    """Read ``path`` as a grey float32 HxW array in [0, 1].

    DICOM is recognised by content (``DICM`` preamble or a parsable dataset), never by suffix,
    and rendered by :mod:`cxrtool.dicom` with the given ``window`` policy.  ``limit`` is the
    pixel limit (None: :func:`max_pixels`).

    Raises
    ------
    ImageLoadError
        With the file name and a one-line reason (empty, truncated, too large, not an image,
        no pixels, non-finite values...).  Nothing else, whatever the bytes (a fuzz test checks).
    """
    path = Path(path)
    limit = max_pixels() if limit is None else limit
    check_file(path)

    from cxrtool import dicom

    if dicom.is_dicom(path):
        arr = dicom.load_dicom_gray(path, window=window, frame=frame, limit=limit)
    else:
        arr = _load_raster(path, limit)
    if not np.isfinite(arr).all():
        raise ImageLoadError(path, "pixel values are not finite (NaN or infinity)")
    return arr


def _load_raster(path: Path, limit: int) -> np.ndarray:
    Image.MAX_IMAGE_PIXELS = limit  # Pillow's own bomb check follows the policy (it refuses at 2x)
    try:
        # From memory, not the file: a chunk claiming 4 GiB makes a file's read() allocate 4 GiB
        # before it finds the file short; a BytesIO read returns only the bytes there are.
        data = io.BytesIO(path.read_bytes())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(data) as im:
                problem = pixel_limit_problem(im.height, im.width, len(im.getbands()), limit=limit)
                if problem:
                    raise ImageLoadError(path, problem)
                im.load()
                im = ImageOps.exif_transpose(im)
                return pil_to_gray(im)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not a DICOM or a readable image") from None
    except Image.DecompressionBombError as exc:  # Pillow's own check (at twice the limit) came first
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found[1]):,} pixels" if found else "too many pixels"
        raise ImageLoadError(path, f"image too large: {size}, over the limit of {limit:,} (${MAX_PIXELS_ENV})") from None
    except MemoryError:
        raise ImageLoadError(path, "image too large to decode (out of memory)") from None
    except Exception as exc:  # Pillow's plugins raise many types on broken files (struct.error, IndexError...)
        raise ImageLoadError(path, f"unreadable image ({one_line(exc) or type(exc).__name__})") from None


def pil_to_gray(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> grey float32 in [0, 1]; 16-bit data keeps its full precision.

    Alpha is dropped (X-ray PNGs with alpha are opaque in practice); CMYK and palette images
    go through RGB; colour is reduced with ITU-R 601 luma, as Pillow's ``L`` conversion does.
    """
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(im, dtype=np.float32)
        return (arr / 65535.0).clip(0.0, 1.0)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        if not np.isfinite(arr).all():  # min-max below would silently turn NaN into a blank image
            raise ValueError("pixel values are not finite (NaN or infinity)")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return arr
        return ((arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)).astype(np.float32)
    if mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGB" if mode != "LA" else "L")
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    if im.mode == "RGB":
        im = im.convert("L")
    return np.asarray(im, dtype=np.float32) / 255.0


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
