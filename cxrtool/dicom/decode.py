"""Decoding one DICOM frame into stored values: the plumbing under the pixel steps of :mod:`cxrtool.dicom.pixels`.

pydicom 3's decoders (with cxrtool's GDCM fallback), colour and palette reduced to luma, and the
bomb checks that must run before any decoder allocates: the header's Rows x Columns and, for
encapsulated data, the size the JPEG / JPEG 2000 codestream itself declares.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

import numpy as np

from cxrtool.inputs import pixel_limit_problem

if TYPE_CHECKING:
    from pydicom import Dataset


class PixelError(ValueError):
    """The pixel data cannot be rendered as a grey-scale image (reason in the message)."""


def frame_count(ds: Dataset) -> int:
    return max(1, _int(ds, "NumberOfFrames", 1))


LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as Pillow's "L" conversion and DCMTK's


def stored_pixels(ds: Dataset, *, frame: int = 0, limit: int | None = None) -> np.ndarray:
    """Decode one frame (pydicom 3 decoders, only that frame for encapsulated data) as HxW.

    Colour images (RGB / YBR, e.g. secondary captures of films) are reduced to luma: the
    grey-scale pipeline does not apply to them, so they are scaled by their bit depth only
    (:func:`colour_bits`).  PALETTE COLOR indices go through their palette first (pydicom's
    ``apply_color_lut``).  Frames over the pixel limit (``limit``, None: the
    :func:`cxrtool.inputs.max_pixels` policy) are refused before anything is decoded.
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise PixelError("no pixel data")
    problem = pixel_limit_problem(_int(ds, "Rows"), _int(ds, "Columns"), _int(ds, "SamplesPerPixel", 1), limit=limit)
    if problem:
        raise PixelError(problem)
    n = frame_count(ds)
    if not 0 <= frame < n:
        raise PixelError(f"frame {frame} out of range (the file has {n})")
    size = _codestream_size(ds, frame, n)  # what the decoder will really allocate for encapsulated data
    if size and min(size) > 0:  # 0 rows: a JPEG whose height comes later (DNL), legal
        problem = pixel_limit_problem(*size, _int(ds, "SamplesPerPixel", 1), limit=limit)
        if problem:
            raise PixelError(f"compressed frame: {problem}")
    arr = _decode(ds, index=frame if n > 1 else None)
    if photometric(ds) == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = arr.astype(np.float64) @ LUMA
    if arr.ndim != 2:
        raise PixelError(f"unexpected pixel array shape {arr.shape}")
    return arr


def _codestream_size(ds: Dataset, frame: int, n: int) -> tuple[int, int] | None:
    """(rows, columns) a JPEG / JPEG 2000 frame's own header declares; None when not encapsulated or unknown.

    The decoders allocate what the codestream says, not what Rows/Columns say, so a frame whose
    header was edited to 65535x65535 is caught here before a decoder asks for gigabytes.
    """
    from pydicom.encaps import get_frame
    from pydicom.uid import UID

    tsyntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if not tsyntax.is_compressed or "PixelData" not in ds:
        return None
    try:
        src = get_frame(ds.PixelData, frame, number_of_frames=n)
    except Exception:  # an unreadable fragment table: the decoder will say what is wrong
        return None
    return _j2k_size(src) or _jpeg_size(src)


def _jpeg_size(src: bytes) -> tuple[int, int] | None:
    """Height and width from the first SOFn segment of a JPEG / JPEG-LS codestream."""
    if src[:2] != b"\xff\xd8":
        return None
    at = 2
    while at + 9 <= len(src):
        if src[at] != 0xFF:
            return None
        marker = src[at + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) or marker == 0xF7:  # SOFn, JPEG-LS SOF55
            height, width = struct.unpack(">HH", src[at + 5 : at + 9])
            return height, width
        at += 2 + struct.unpack(">H", src[at + 2 : at + 4])[0]
    return None


def _j2k_size(src: bytes) -> tuple[int, int] | None:
    """Height and width from the SIZ segment of a JPEG 2000 codestream (bare or in a JP2 box)."""
    at = src.find(b"\xff\x4f\xff\x51", 0, 4096)
    if at < 0 or len(src) < at + 24:
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", src[at + 8 : at + 24])
    return max(0, ysiz - yosiz), max(0, xsiz - xosiz)


def colour_bits(ds: Dataset) -> int | None:
    """Bit depth of a colour image's samples (palette entries for PALETTE COLOR); None for grey."""
    if photometric(ds) == "PALETTE COLOR":
        descriptor = ds.get("RedPaletteColorLookupTableDescriptor")
        bits = int(descriptor[2]) if descriptor is not None and len(descriptor) == 3 else 16
        return bits if bits in (8, 16) else 16
    if _int(ds, "SamplesPerPixel", 1) != 1:
        bits = _int(ds, "BitsStored", 8)
        return bits if 1 <= bits <= 32 else 8
    return None


def photometric(ds: Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper()


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    """An integer header value; a missing or malformed one counts as ``default``."""
    try:
        return int(ds.get(keyword, default) or default)
    except Exception:  # pydicom converts on access: a broken VR raises NotImplementedError, bad text ValueError
        return default


def _decode(ds: Dataset, *, index: int | None) -> np.ndarray:
    """pydicom 3 decoding, trying the preferred plugin for this transfer syntax first.

    pydicom then tries all its available plugins, and last cxrtool's GDCM fallback
    (:mod:`cxrtool.dicom.gdcm_fallback`) for what pydicom will not hand to GDCM itself.
    """
    from pydicom.pixels import pixel_array

    from cxrtool.dicom.gdcm_fallback import register_fallback
    from cxrtool.dicom.syntaxes import PREFERRED_PLUGINS

    register_fallback()
    plugin = PREFERRED_PLUGINS.get(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if plugin:
        try:
            return pixel_array(ds, index=index, decoding_plugin=plugin)
        except Exception:  # not available or cannot decode this variant: let pydicom choose
            pass
    return pixel_array(ds, index=index)
