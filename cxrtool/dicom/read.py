"""Detect and read DICOM files by content (FOUNDATION PLACEHOLDER: the prep-dicom work owns this).

Minimal working version so other parts can load DICOMs; the full pipeline replaces it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxrtool.errors import ImageLoadError


def is_dicom(path: str | Path) -> bool:
    """True for a DICOM Part 10 file (``DICM`` at byte 128) or a parsable ACR-NEMA style dataset."""
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:
        return False
    return len(ds) > 0 and "Modality" in ds or "Rows" in ds


def read_dataset(path: str | Path):
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise ImageLoadError(path, f"unreadable DICOM ({exc})") from None
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds


def load_dicom_gray(path: str | Path, *, window: str = "dicom", frame: int = 0) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = read_dataset(path)
    if "PixelData" not in ds:
        raise ImageLoadError(path, "DICOM has no pixel data")
    arr = ds.pixel_array.astype(np.float64)
    arr = apply_modality_lut(arr, ds)
    if window == "dicom":
        arr = apply_voi_lut(arr, ds)
    lo, hi = arr.min(), arr.max()
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        arr = 1.0 - arr
    return arr.astype(np.float32)
