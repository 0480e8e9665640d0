"""The DICOM grey-scale pixel pipeline as named steps, in the order of PS3.3 C.11 / PS3.4 N.2.1.1.

Stored values --:func:`apply_modality`--> modality values --:func:`apply_voi`--> display values
in [0, 1] --:func:`invert_monochrome1`--> [0, 1] with white = dense --(:func:`resize_long_side`)
--> :func:`to_uint` 8/16-bit.  :func:`render` chains them; :func:`render_unit` stops before
quantisation (what :func:`cxrtool.images.load_image` feeds the network).

Each step has the signature ``(arr, ds, *, ...) -> arr`` (like pydicom 3's
``pydicom.pixels.processing``) and leaves ``arr`` unchanged when the file lacks its module, so
the steps chain safely.  The one exception is :func:`apply_voi`: VOI is where stored values
become display values, so it always returns [0, 1] (with no VOI in the file the ``dicom`` policy
falls back to the image's min-max window, as viewers do).

Scaling follows DCMTK's ``dcmimgle`` so ``dcmj2pnm`` agrees within one grey level at 8 bits:
the linear window maps ``[c - 0.5 - (w - 1)/2, c - 0.5 + (w - 1)/2]`` onto the output range,
min-max uses the window ``c = (min + max + 1)/2, w = max - min + 1`` (so min -> 0, max -> top)
and ``none`` scales the full range the stored bits can hold after the modality transform.
We round where DCMTK truncates, hence the one-level tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrtool.dicom.decode import PixelError, colour_bits, photometric, stored_pixels

if TYPE_CHECKING:
    from pydicom import Dataset

WINDOW_POLICIES: tuple[str, ...] = ("dicom", "minmax", "none")
VOI_FUNCTIONS: tuple[str, ...] = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
OUTPUT_BITS: tuple[int, ...] = (8, 16)


# --- lookup tables ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Lut:
    """A Modality or VOI LUT: ``first_map`` is the input value mapped to ``data[0]``."""

    first_map: int
    data: np.ndarray
    bits: int

    @classmethod
    def from_item(cls, item: Dataset, *, little_endian: bool = True, signed_input: bool = False) -> Lut:
        """Read an item of a Modality/VOI LUT Sequence (PS3.3 C.11.1.1.1, C.11.2.1.1).

        The first descriptor value 0 means 65536 entries; the first mapped value is signed
        when the LUT's input is (``signed_input``) even if the file stored it as US; OW data is
        decoded with the file's byte order.  When the declared entry depth is smaller than the
        data really use (a known encoder bug), the depth is widened to fit the data.
        """
        n, first, bits = (int(v) for v in item.LUTDescriptor)
        n = n or 65536
        if signed_input and first > 32767:
            first -= 65536
        raw = item.LUTData
        if isinstance(raw, (bytes, bytearray)):
            dtype = np.uint8 if len(raw) == n else np.dtype("<u2" if little_endian else ">u2")
            data = np.frombuffer(raw, dtype=dtype)[:n]
        else:
            data = np.atleast_1d(np.asarray(raw, dtype=np.int64))
        data = data.astype(np.float64)
        if data.size == 0:
            raise PixelError("LUT has no data")
        top = int(data.max())
        if top >= 2**bits:
            bits = max(1, top.bit_length())
        return cls(first_map=first, data=data, bits=bits)

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        """Values below the first mapped value take the first entry, above the last the last one."""
        idx = np.floor(arr).astype(np.int64) - self.first_map
        np.clip(idx, 0, self.data.size - 1, out=idx)
        return self.data[idx]


def _little_endian(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts is not None:
        return ts != "1.2.840.10008.1.2.2"  # Explicit VR Big Endian
    return ds.original_encoding[1] is not False


def _modality_lut(ds: Dataset) -> Lut:
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return Lut.from_item(ds.ModalityLUTSequence[0], little_endian=_little_endian(ds), signed_input=signed)


# --- modality -------------------------------------------------------------------------------


def apply_modality(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values -> modality values (Modality LUT Sequence, else Rescale Slope/Intercept).

    Notes
    -----
    Must come before any VOI step (PS3.4 N.2.1.1).  When a file has both a Modality LUT
    Sequence and rescale values the LUT wins, as in pydicom and DCMTK.  ``arr`` is returned
    unchanged when neither is present.

    References
    ----------
    DICOM PS3.3 C.11.1 Modality LUT Module.
    """
    if ds.get("ModalityLUTSequence"):
        return _modality_lut(ds)(arr)
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        return arr.astype(np.float64) * slope + intercept
    return arr


def modality_range(ds: Dataset) -> tuple[float, float]:
    """The range modality values *can* take: stored bits through the modality transform.

    This is what ``--window none`` scales to the output (DCMTK's "absolute" range), so the
    same raw value always gives the same grey level whatever else is in the image.
    """
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** _modality_lut(ds).bits - 1)
    ends = apply_modality(np.array([lo, hi], dtype=np.float64), ds)
    return float(ends.min()), float(ends.max())


# --- VOI ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Voi:
    """Which VOI transform a file gets under a policy; ``describe`` goes in the manifest."""

    kind: str  # "lut", "window", "minmax" or "range"
    center: float = 0.0
    width: float = 0.0
    function: str = "LINEAR"
    lut: Lut | None = None
    note: str = ""

    def describe(self) -> str:
        if self.kind == "window":
            text = f"window {self.center:g}/{self.width:g} {self.function}"
        elif self.kind == "lut":
            text = "VOI LUT"
        elif self.kind == "minmax":
            text = "min-max"
        else:
            text = "full range"
        return f"{text} ({self.note})" if self.note else text


def select_voi(ds: Dataset, *, window: str = "dicom", index: int = 0) -> Voi:
    """Pick the VOI transform: the file's (VOI LUT Sequence first, then Window Center/Width,
    item ``index`` when several) under ``dicom``; the image's min-max; or the full range (``none``).

    A file window that cannot be used (width < 1 for LINEAR, <= 0 otherwise) falls back to
    min-max, with the reason kept in :attr:`Voi.note`.
    """
    if window not in WINDOW_POLICIES:
        raise ValueError(f"window must be one of {WINDOW_POLICIES}, not {window!r}")
    if window == "none":
        return Voi("range")
    if window == "minmax":
        return Voi("minmax")
    seq = ds.get("VOILUTSequence")
    if seq:
        item = seq[min(index, len(seq) - 1)]
        signed = modality_range(ds)[0] < 0
        return Voi("lut", lut=Lut.from_item(item, little_endian=_little_endian(ds), signed_input=signed))
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        center = float(_nth(ds.WindowCenter, index))
        width = float(_nth(ds.WindowWidth, index))
        function = str(_nth(ds.get("VOILUTFunction") or "LINEAR", index)).strip().upper() or "LINEAR"
        if function not in VOI_FUNCTIONS:
            return Voi("minmax", note=f"unknown VOI LUT Function {function!r}")
        if width < 1 if function == "LINEAR" else width <= 0:
            return Voi("minmax", note=f"invalid window width {width:g}")
        return Voi("window", center=center, width=width, function=function)
    return Voi("minmax", note="no VOI in file")


def _nth(value: Any, index: int) -> Any:
    """Value ``index`` of a multi-valued element (the last one if there are fewer)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):  # MultiValue too
        return value[min(index, len(value) - 1)]
    return value


def window_linear(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 LINEAR window, output in [0, 1] (``width >= 1``)."""
    if width <= 1:
        return (arr > center - 0.5).astype(np.float64)
    out = (arr - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(out, 0.0, 1.0)


def window_linear_exact(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.2 LINEAR_EXACT window, output in [0, 1] (``width > 0``)."""
    return np.clip((arr - center) / width + 0.5, 0.0, 1.0)


def window_sigmoid(arr: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1 SIGMOID window, output in (0, 1) (``width > 0``)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-4.0 * (arr - center) / width))


def minmax_unit(arr: np.ndarray) -> np.ndarray:
    """Min -> 0, max -> 1 (the min-max window); a constant image becomes all 0."""
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.float64)
    return (arr.astype(np.float64) - lo) / (hi - lo)


_WINDOWS = {"LINEAR": window_linear, "LINEAR_EXACT": window_linear_exact, "SIGMOID": window_sigmoid}


def apply_voi(arr: np.ndarray, ds: Dataset, *, window: str = "dicom", index: int = 0) -> np.ndarray:
    """Modality values -> display values in [0, 1] under the ``window`` policy.

    Parameters
    ----------
    arr:
        Modality values (the output of :func:`apply_modality`).
    ds:
        The dataset (VOI LUT Module, Photometric Interpretation, bits).
    window:
        ``dicom``: the file's VOI (VOI LUT Sequence, else Window Center/Width with its VOI LUT
        Function, else min-max); ``minmax``: the image's own min-max; ``none``: no VOI, the full
        :func:`modality_range` scaled linearly.
    index:
        Which window / LUT to use when the file offers several (the first by default).

    Returns
    -------
    numpy.ndarray
        float64 in [0, 1], 0 = lowest display value (black before MONOCHROME1 inversion).

    Notes
    -----
    Comes after :func:`apply_modality` and before :func:`invert_monochrome1` (PS3.4 N.2.1.1).
    A VOI LUT output of ``v`` maps to ``v / (2**bits - 1)`` with ``bits`` from its descriptor.

    References
    ----------
    DICOM PS3.3 C.11.2 VOI LUT Module; C.11.2.1.2 Window Center and Window Width.
    """
    return apply_selected_voi(arr, ds, select_voi(ds, window=window, index=index))


def apply_selected_voi(arr: np.ndarray, ds: Dataset, voi: Voi) -> np.ndarray:
    """Apply a VOI chosen by :func:`select_voi` (split out so callers can record the choice)."""
    if voi.kind == "lut" and voi.lut is not None:
        return voi.lut(arr) / float(2**voi.lut.bits - 1)
    if voi.kind == "window":
        return _WINDOWS[voi.function](arr.astype(np.float64), voi.center, voi.width)
    if voi.kind == "range":
        lo, hi = modality_range(ds)
        return np.clip((arr.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros(arr.shape)
    return minmax_unit(arr)


# --- presentation ---------------------------------------------------------------------------


def invert_monochrome1(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """MONOCHROME1 (low values white) -> the usual MONOCHROME2 look; unchanged otherwise.

    Notes
    -----
    Needs display values in [0, 1], i.e. runs after :func:`apply_voi`; pydicom's
    ``apply_windowing`` leaves this to the caller, so it is a step of its own here.

    References
    ----------
    DICOM PS3.3 C.7.6.3.1.2 Photometric Interpretation.
    """
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        return 1.0 - arr
    return arr


def resize_long_side(arr: np.ndarray, size: int | None) -> np.ndarray:
    """Anti-aliased (Lanczos) resize of a float image so its long side is ``size``; None = as is."""
    if not size:
        return arr
    h, w = arr.shape
    if max(h, w) == size:
        return arr
    scale = size / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    return np.asarray(im.resize(new, Image.Resampling.LANCZOS), dtype=np.float64)


def to_uint(arr: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] -> unsigned integers over the full ``bits`` range (rounded; out-of-range clipped)."""
    if bits not in OUTPUT_BITS:
        raise ValueError(f"bits must be one of {OUTPUT_BITS}, not {bits}")
    top = 2**bits - 1
    out = np.rint(np.clip(arr, 0.0, 1.0) * top)
    return out.astype(np.uint8 if bits == 8 else np.uint16)


# --- whole pipeline ---------------------------------------------------------------------------


def render_unit(
    ds: Dataset, *, window: str = "dicom", frame: int = 0, index: int = 0, limit: int | None = None
) -> tuple[np.ndarray, Voi]:
    """Modality -> VOI -> MONOCHROME1 inversion: display values in [0, 1] and the VOI used.

    Colour (RGB, YBR, PALETTE COLOR) images skip the grey-scale steps: their luma is scaled by
    the sample depth.  ``limit`` is the pixel limit (see :func:`stored_pixels`).
    """
    arr = stored_pixels(ds, frame=frame, limit=limit)
    bits = colour_bits(ds)
    if bits:
        kind = "palette colour" if photometric(ds) == "PALETTE COLOR" else "colour image"
        return np.clip(arr / (2**bits - 1), 0.0, 1.0), Voi("range", note=f"{kind}, luma")
    arr = apply_modality(arr, ds)
    voi = select_voi(ds, window=window, index=index)
    arr = apply_selected_voi(arr, ds, voi)
    return invert_monochrome1(arr, ds), voi


def render(
    ds: Dataset,
    *,
    window: str = "dicom",
    frame: int = 0,
    bits: int = 8,
    size: int | None = None,
    limit: int | None = None,
) -> tuple[np.ndarray, Voi]:
    """The whole chain for one frame: an 8- or 16-bit grey image as a viewer would show it, and the VOI used."""
    arr, voi = render_unit(ds, window=window, frame=frame, limit=limit)
    return to_uint(resize_long_side(arr, size), bits), voi
