"""The shared loader: any supported file (DICOM by content, or a raster image) -> grey float32 in [0, 1].

Every command that reads films (prep, train, predict, explain) goes through :func:`load_image`,
so a DICOM is shown to the network exactly as ``prep dicom`` would render it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxrtool.errors import ImageLoadError

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def load_image(path: str | Path, *, window: str = "dicom", frame: int = 0) -> np.ndarray:
    """Read ``path`` as a grey float32 HxW array in [0, 1].

    DICOM is recognised by content (``DICM`` preamble or a parsable dataset), never by suffix,
    and rendered by :mod:`cxrtool.dicom` with the given ``window`` policy.

    Raises
    ------
    ImageLoadError
        With the file name and a one-line reason (empty, truncated, not an image, no pixels...).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageLoadError(path, exc.strerror or str(exc)) from None
    if size == 0:
        raise ImageLoadError(path, "empty file (0 bytes)")

    from cxrtool import dicom

    if dicom.is_dicom(path):
        return dicom.load_dicom_gray(path, window=window, frame=frame)
    return _load_raster(path)


def _load_raster(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return pil_to_gray(im)
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not a DICOM or a readable image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageLoadError(path, f"unreadable image ({exc})") from None


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
    and a non-image becomes an error row rather than being silently ignored.
    """
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and not _is_sidecar(name):
                        yield Path(root) / name
        else:
            yield p


def _is_sidecar(name: str) -> bool:
    lower = name.lower()
    return lower.endswith((".csv", ".json", ".jsonl", ".md", ".txt", ".npy"))
