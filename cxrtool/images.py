"""The shared loader: any supported file (DICOM by content, or a raster image) -> grey float32 in [0, 1].

Every command that reads films (prep, train, predict, explain) goes through :func:`load_image`,
so a DICOM is shown to the network exactly as ``prep dicom`` would render it, and every command
has the same input policy: :func:`check_file` (regular, non-empty, no symlink loop) and
:func:`max_pixels` (decompression bombs and absurd headers become an :class:`ImageLoadError`).
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxrtool.errors import ImageLoadError, one_line
from cxrtool.inputs import MAX_PIXELS_ENV, check_file, max_pixels, pixel_limit_problem

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


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
        raise ImageLoadError(
            path, f"image too large: {size}, over the limit of {limit:,} (${MAX_PIXELS_ENV})"
        ) from None
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
