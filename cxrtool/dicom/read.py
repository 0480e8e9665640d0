"""Detect and read DICOM files by content, including old ACR-NEMA files with no file meta."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxrtool.errors import ImageLoadError, one_line

if TYPE_CHECKING:
    from pydicom import Dataset

# Groups an ACR-NEMA / meta-less data set can start with: group lengths, file meta, identifying.
_FIRST_GROUPS = frozenset({0x0000, 0x0002, 0x0008})
_IMAGE_TAGS = ("Rows", "Modality", "SOPClassUID", "PixelData")

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
UNDEFINED_LENGTH = 0xFFFFFFFF

# pydicom warns (UserWarning) about each oddity it tolerates while reading or decoding; the reasons
# that matter reach the user as one error row, so its warnings would only be noise on the terminal.
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")


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
    try:
        ds = _dcmread(path, stop_before_pixels=True)
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
        Empty, truncated (with the number of bytes missing where the header tells), unreadable or
        not a DICOM data set.
    """
    import pydicom

    from cxrtool.inputs import check_file

    path = Path(path)
    size = check_file(path)
    try:
        ds = _dcmread(path, stop_before_pixels=stop_before_pixels)
    except ImageLoadError:
        raise
    except OSError as exc:
        raise ImageLoadError(path, exc.strerror or one_line(exc)) from None
    except EOFError as exc:
        raise ImageLoadError(path, f"truncated ({one_line(exc)})") from None
    except MemoryError:
        raise ImageLoadError(path, "unreadable DICOM (an element is too large to read)") from None
    except Exception as exc:  # pydicom raises many types on broken headers; each file fails on its own
        raise ImageLoadError(path, f"unreadable DICOM ({one_line(exc) or type(exc).__name__})") from None
    try:  # the checks convert a few file meta elements, which raise on malformed bytes
        reason = truncation(ds, size) or (_empty_reason(path, ds, size, stop_before_pixels) if len(ds) == 0 else None)
        if reason is None and ds.file_meta.get("TransferSyntaxUID") is None:
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(
                IMPLICIT_LE if implicit is not False else EXPLICIT_LE if little is not False else EXPLICIT_BE
            )
    except Exception as exc:
        reason = f"unreadable DICOM file meta ({one_line(exc) or type(exc).__name__})"
    if reason:
        raise ImageLoadError(path, reason)
    return ds


def _dcmread(path: Path, *, stop_before_pixels: bool) -> Dataset:
    """``pydicom.dcmread`` from the file's bytes in memory.

    Reading from a real file, a garbage element length (up to 4 GiB) makes Python allocate that
    much for ``read(length)`` before finding the file is short; from memory a read returns only
    the bytes there are, so a 2 KB file can never cost more than its size.
    """
    import pydicom

    data = Path(path).read_bytes()
    _check_inflated_size(path, data)
    return pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=stop_before_pixels)


def _check_inflated_size(path: Path, data: bytes) -> None:
    """Refuse a Deflated Explicit VR data set that inflates beyond the pixel policy (a zip bomb).

    pydicom inflates the whole data set in one call; a 1 MB file can hold a gigabyte of zeros.
    The bound is 4 bytes per allowed pixel value plus 16 MiB of header, checked chunk by chunk.
    """
    from cxrtool.inputs import MAX_PIXELS_ENV, max_pixels

    if data[128:132] != b"DICM" or len(data) < 144:
        return
    meta_end = 144 + int.from_bytes(data[140:144], "little")  # (0002,0000) group length, explicit VR LE
    if DEFLATED_LE.encode() not in data[132:meta_end]:
        return
    bound = 4 * max_pixels() + 2**24
    inflater, rest, total = zlib.decompressobj(-zlib.MAX_WBITS), data[meta_end:], 0
    try:
        while total <= bound:
            out = inflater.decompress(rest, 2**20)
            if not out:
                break
            total, rest = total + len(out), inflater.unconsumed_tail
    except zlib.error:
        return  # not valid deflate: pydicom's own error names it
    if total > bound:
        raise ImageLoadError(
            path, f"deflated data set inflates to more than {bound:,} bytes (decompression bomb; ${MAX_PIXELS_ENV})"
        )


def truncation(ds: Dataset, size: int) -> str | None:
    """Why a freshly read data set is incomplete, from its elements' declared lengths; None if complete.

    pydicom reads a value cut by the end of the file as the bytes that are there and stops silently
    inside a cut element header, so both are recognised here: a value shorter than its length
    (``N bytes missing``, at least: later elements are gone too) or fewer than 8 bytes after the
    last complete element.  Call it before anything converts the raw elements.
    """
    end: int | None = 0
    for tag in ds.keys():  # noqa: SIM118 (iterating the Dataset would convert the raw elements)
        elem = ds.get_item(tag, keep_deferred=True)  # never convert (a bad VR would raise here)
        length, value, tell = (
            getattr(elem, "length", None),
            getattr(elem, "value", None),
            getattr(elem, "value_tell", None),
        )
        if length is None or tell is None or length == UNDEFINED_LENGTH or not isinstance(value, (bytes, bytearray)):
            end = None  # a sequence or converted element: its end is not known from here
            continue
        if len(value) < length:
            if length >= 2**31:  # a length no real element has: garbage bytes, not a cut copy
                return f"corrupt or truncated: element {elem.tag} claims {length:,} bytes, the file has {size:,}"
            return f"truncated ({length - len(value):,} bytes missing)"
        end = tell + length
    meta = getattr(ds, "file_meta", None)
    deflated = meta is not None and meta.get("TransferSyntaxUID") == DEFLATED_LE
    if end and not deflated and 0 < size - end < 8:
        return "truncated (the file ends inside an element header)"
    return None


def _empty_reason(path: Path, ds: Dataset, size: int, stop_before_pixels: bool) -> str:
    """An empty data set: say truncated when the file meta or the header before the pixels was there."""
    meta = getattr(ds, "file_meta", None)
    group_length = meta.get("FileMetaInformationGroupLength") if meta is not None else None
    if isinstance(group_length, int) and 132 + 12 + group_length > size:
        return f"truncated inside the file meta ({132 + 12 + group_length - size:,} bytes missing)"
    if not stop_before_pixels:
        try:
            header = _dcmread(path, stop_before_pixels=True)
        except Exception:
            header = None
        if header is not None and len(header) > 0:
            return "truncated inside the pixel data (the file ends before its last fragment)"
    if meta is not None and len(meta) > 0:
        return "truncated or corrupt: no data set after the file meta"
    return "not a DICOM data set"


def load_dicom_gray(path: str | Path, *, window: str = "dicom", frame: int = 0, limit: int | None = None) -> np.ndarray:
    """A DICOM frame as float32 HxW in [0, 1], rendered like ``prep dicom`` does (before quantising).

    ``limit``: the pixel limit (None: :func:`cxrtool.inputs.max_pixels`), checked before decoding.

    Raises
    ------
    ImageLoadError
        With the file and the reason (no pixel data, undecodable, truncated, too large...).
    """
    from cxrtool.dicom.pixels import render_unit

    ds = read_dataset(path)
    try:
        arr, _ = render_unit(ds, window=window, frame=frame, limit=limit)
    except Exception as exc:  # decoders raise many types; each file fails on its own
        raise ImageLoadError(path, pixel_error_reason(exc)) from None
    return arr.astype(np.float32)


def pixel_error_reason(exc: BaseException) -> str:
    """One line for a failed decode: our own reasons as they are, others with the codec's words."""
    from cxrtool.dicom.decode import PixelError

    if isinstance(exc, PixelError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "cannot decode pixel data (out of memory)"
    return f"cannot decode pixel data ({one_line(exc) or type(exc).__name__})"
