"""Detect and read DICOM files by content, including old ACR-NEMA files with no file meta."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrtool.errors import ImageLoadError

if TYPE_CHECKING:
    from pydicom import Dataset

# Groups an ACR-NEMA / meta-less data set can start with: group lengths, file meta, identifying.
_FIRST_GROUPS = frozenset({0x0000, 0x0002, 0x0008})
_IMAGE_TAGS = ("Rows", "Modality", "SOPClassUID", "PixelData")

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"


def is_dicom(path: str | Path) -> bool:
    """True for a Part 10 file (``DICM`` at byte 128) or a meta-less data set that parses.

    The extension is never looked at.  Without a preamble the first element must be a
    little-endian tag of group 0000/0002/0008 and the parsed data set must look like an image
    object, so PNGs, CSVs or random bytes are not mistaken for DICOM.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    if len(head) < 8 or struct.unpack("<H", head[:2])[0] not in _FIRST_GROUPS:
        return False
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:
        return False
    return any(tag in ds for tag in _IMAGE_TAGS)


def read_dataset(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file; a meta-less (ACR-NEMA) file gets the transfer syntax it was read with.

    pydicom detects implicit vs explicit VR from the first element but only decodes pixels when
    *Transfer Syntax UID* is set, so it is filled in from ``ds.original_encoding``.

    Raises
    ------
    ImageLoadError
        Empty, unreadable or not a DICOM data set.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError(path, "empty file (0 bytes)")
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except ImageLoadError:
        raise
    except OSError as exc:
        raise ImageLoadError(path, exc.strerror or str(exc)) from None
    except (InvalidDicomError, EOFError, ValueError, struct.error, KeyError, TypeError) as exc:
        raise ImageLoadError(path, f"unreadable DICOM ({_one_line(exc)})") from None
    if len(ds) == 0:
        raise ImageLoadError(path, "not a DICOM data set")
    if ds.file_meta.get("TransferSyntaxUID") is None:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(
            IMPLICIT_LE if implicit is not False else EXPLICIT_LE if little is not False else EXPLICIT_BE
        )
    return ds


def load_dicom_gray(path: str | Path, *, window: str = "dicom", frame: int = 0) -> np.ndarray:
    """A DICOM frame as float32 HxW in [0, 1], rendered like ``prep dicom`` does (before quantising).

    Raises
    ------
    ImageLoadError
        With the file and the reason (no pixel data, undecodable, truncated...).
    """
    from cxrtool.dicom.pixels import render_unit

    ds = read_dataset(path)
    try:
        arr, _ = render_unit(ds, window=window, frame=frame)
    except Exception as exc:  # decoders raise many types; each file fails on its own
        raise ImageLoadError(path, pixel_error_reason(exc)) from None
    return arr.astype(np.float32)


def pixel_error_reason(exc: BaseException) -> str:
    """One line for a failed decode: our own reasons as they are, others with the codec's words."""
    from cxrtool.dicom.pixels import PixelError

    if isinstance(exc, PixelError):
        return str(exc)
    return f"cannot decode pixel data ({_one_line(exc)})"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
