"""The awkward-input corpus: files a hostile but realistic user (or a Windows share) hands to cxrtool.

:func:`build_corpus` writes one file (or link, FIFO, folder) per case under a root and returns
:class:`Case` records saying what each command must make of it.  Every file is generated here
(synthetic pixels, pydicom-written DICOMs, hand-made headers), so nothing real or licensed is copied.

Expectations per command:

* ``load``: what :func:`cxrtool.images.load_image` (and so ``predict``/``explain``) must do:
  ``"ok"`` (an image) or ``"failed"`` (an :class:`~cxrtool.errors.ImageLoadError`, reason containing
  ``reason``).  ``"either"`` means both are honest answers (a name too long for an output file).
* ``prep``: the ``prep dicom`` manifest status: ``ok``, ``failed``, ``skipped`` (not a DICOM) or ``either``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

LATIN1_NAME = b"caf\xe9.png"  # "café" as Windows-1252 / Latin-1 bytes: not valid UTF-8
LATIN1_DICOM = b"r\xe9sum\xe9.dcm"
LATIN1_FOLDER = b"d\xe9j\xe0"


@dataclass(frozen=True)
class Case:
    """One awkward input: its path, and what loading / ``prep dicom`` must report."""

    name: str
    path: Path
    load: str  # "ok" | "failed" | "either"
    prep: str  # "ok" | "failed" | "skipped" | "either"
    reason: str = ""  # a word the error reason must contain (case-insensitive), when it fails


def _fs(root: Path, raw: bytes) -> Path:
    """A path whose last part is the raw (possibly non-UTF-8) bytes ``raw``."""
    return root / os.fsdecode(raw)


def _grey(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.tile(np.linspace(0, 255, w), (h, 1)) * rng.uniform(0.3, 1.0)
    img[h // 4 : h // 2, w // 4 : w // 2] = 255
    return img.astype(np.uint8)


def png_bytes(h: int = 40, w: int = 48, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_grey(h, w, seed)).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(h: int = 40, w: int = 48, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_grey(h, w, seed)).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def dicom_bytes(h: int = 32, w: int = 40, *, bits: int = 12, **tags: object) -> bytes:
    """A small MONOCHROME2 CR chest DICOM (explicit VR LE) written by pydicom; ``tags`` override."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian

    arr = np.rint(np.tile(np.linspace(0, 2**bits - 1, w), (h, 1))).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.PatientID = "SYNTH-0001"
    ds.set_pixel_data(arr, "MONOCHROME2", bits)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG header for a ``width`` x ``height`` grey image with almost no data.

    Pillow reads only the header at open, so this is a decompression bomb in 70 bytes.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def jpeg_huge_dims(width: int = 65_000, height: int = 65_000) -> bytes:
    """A real JPEG whose SOF0 header is patched to claim ``width`` x ``height``."""
    data = bytearray(jpeg_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def nan_tiff() -> bytes:
    """A float32 (mode F) TIFF with NaN and infinity in it."""
    arr = np.linspace(0, 1, 40 * 48, dtype=np.float32).reshape(40, 48)
    arr[3, 3], arr[5, 5] = np.nan, np.inf
    buf = io.BytesIO()
    Image.fromarray(arr, mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def build_corpus(root: Path, *, with_fifo: bool = True) -> list[Case]:
    """Write every case under ``root`` (created) and return them; see the module docstring."""
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, rel: Path | str, data: bytes | None, load: str, prep: str, reason: str = "") -> Path:
        path = rel if isinstance(rel, Path) else root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            path.write_bytes(data)
        cases.append(Case(name, path, load, prep, reason))
        return path

    good_dcm = dicom_bytes()
    # fine files, some with awkward names or suffixes
    add("good png", "good.png", png_bytes(seed=1), "ok", "skipped", "not a dicom")
    add("good dicom", "good.dcm", good_dcm, "ok", "ok")
    add("latin-1 png name", _fs(root, LATIN1_NAME), png_bytes(seed=2), "ok", "skipped", "not a dicom")
    add("latin-1 dicom name", _fs(root, LATIN1_DICOM), dicom_bytes(bits=10), "ok", "ok")
    add("latin-1 folder", _fs(root, LATIN1_FOLDER) / "inner.dcm", dicom_bytes(bits=8), "ok", "ok")
    add("png named .dcm", "png_named.dcm", png_bytes(seed=3), "ok", "skipped", "not a dicom")
    add("dicom named .png", "dicom_named.png", good_dcm, "ok", "ok")
    add("dicom without suffix", "IM0001", good_dcm, "ok", "ok")
    add("jpeg named .png", "jpeg_named.png", jpeg_bytes(seed=4), "ok", "skipped", "not a dicom")
    add("1x1 png", "one_pixel.png", png_bytes(1, 1), "ok", "skipped", "not a dicom")
    add("name with spaces and markup", "[bold]x [red] y.png", png_bytes(seed=5), "ok", "skipped", "not a dicom")
    add("very long name", "L" * 240 + ".png", png_bytes(seed=6), "either", "skipped", "")

    # broken or hostile raster files
    add("zero-byte file", "zero.png", b"", "failed", "failed", "empty")
    add("garbage bytes", "garbage.png", np.random.default_rng(7).bytes(3000), "failed", "skipped", "not a dicom")
    add("text named .png", "text.png", b"hello, I am not an image\n" * 20, "failed", "skipped", "not a dicom")
    add("truncated png", "truncated.png", png_bytes(seed=8)[:80], "failed", "skipped", "")
    add("truncated jpeg", "truncated.jpg", jpeg_bytes(seed=9)[:300], "failed", "skipped", "")
    add("png decompression bomb", "bomb.png", png_bomb(), "failed", "skipped", "too large")
    add("png just over a 2x Pillow limit", "bomb_wide.png", png_bomb(200_000, 1_000), "failed", "skipped", "too large")
    add("jpeg with huge dimensions", "huge.jpg", jpeg_huge_dims(), "failed", "skipped", "too large")
    add("float tiff with NaN", "nan.tif", nan_tiff(), "failed", "skipped", "not finite")

    # broken or hostile DICOM files
    add(
        "truncated dicom pixel data",
        "trunc_pixels.dcm",
        good_dcm[: len(good_dcm) - 1000],
        "failed",
        "failed",
        "bytes missing",
    )
    cut_header = good_dcm.index(b"\x28\x00\x10\x00")  # (0028,0010) Rows: cut inside the element header
    add(
        "dicom cut inside an element header",
        "trunc_header.dcm",
        good_dcm[: cut_header + 3],
        "failed",
        "failed",
        "truncated",
    )
    add("dicom cut inside the file meta", "trunc_meta.dcm", good_dcm[:150], "failed", "failed", "truncated")
    add("dicom decompression bomb", "bomb.dcm", _patch_dims(good_dcm, 60_000, 60_000), "failed", "failed", "too large")
    add("dicom with zero rows", "zero_rows.dcm", _patch_dims(good_dcm, 0, 40), "failed", "failed", "invalid image size")
    add(
        "DICM magic then garbage",
        "magic.dcm",
        b"\x00" * 128 + b"DICM" + np.random.default_rng(10).bytes(2000),
        "failed",
        "failed",
        "",
    )
    add("dicom without pixel data", "no_pixels.dcm", _without_pixels(good_dcm), "failed", "skipped", "no pixel data")

    # things that are not regular files
    loop = root / "loop.png"
    os.symlink(loop.name, loop)
    add("symlink loop", loop, None, "failed", "failed", "symbolic link loop")
    dangling = root / "dangling.dcm"
    os.symlink("does-not-exist.dcm", dangling)
    add("dangling symlink", dangling, None, "failed", "failed", "dangling")
    (root / "sub").mkdir(exist_ok=True)
    back = root / "sub" / "back"
    os.symlink("..", back)
    add("symlink to a parent folder", back, None, "failed", "failed", "symbolic link to a folder")
    if with_fifo:
        fifo = root / "fifo.png"
        os.mkfifo(fifo)
        add("FIFO", fifo, None, "failed", "failed", "not a regular file")
    return cases


def _patch_dims(data: bytes, rows: int, columns: int) -> bytes:
    """Rewrite the (0028,0010) Rows / (0028,0011) Columns values of an explicit VR LE DICOM."""
    out = bytearray(data)
    for tag, value in ((b"\x28\x00\x10\x00US", rows), (b"\x28\x00\x11\x00US", columns)):
        at = out.index(tag)
        out[at + 8 : at + 10] = struct.pack("<H", value)
    return bytes(out)


def _without_pixels(data: bytes) -> bytes:
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(data))
    del ds.PixelData
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
