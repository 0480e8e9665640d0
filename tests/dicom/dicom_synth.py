"""Builders of synthetic DICOMs for what the real fixtures lack (VOI LUT Sequence, 16-bit signed, multi-frame,
sigmoid window, no pixel data, truncated and zero-byte files, meta-less ACR-NEMA).

All are tiny (<= 64 px) and written by pydicom here; none holds real patient data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

PHI_NAME = "Doe^Jane"
PHI_ID = "PAT-12345"


def ramp(h: int = 32, w: int = 48, lo: int = 0, hi: int = 4095, dtype=np.uint16) -> np.ndarray:
    """A horizontal ramp from lo to hi plus a brighter square: covers every window region."""
    row = np.linspace(lo, hi, w)
    arr = np.tile(row, (h, 1))
    arr[4:10, 4:10] = hi
    return np.rint(arr).astype(dtype)


def make_image(
    arr: np.ndarray,
    *,
    bits_stored: int,
    photometric: str = "MONOCHROME2",
    **tags: object,
) -> Dataset:
    """A CR chest image dataset around ``arr`` (2-D, or 3-D = frames) with file meta."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientName = PHI_NAME
    ds.PatientID = PHI_ID
    ds.set_pixel_data(arr, photometric, bits_stored)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def lut_item(data: np.ndarray, *, first_map: int, bits: int) -> Dataset:
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [len(data) % 65536, first_map % 65536, bits])
    item.add_new("LUTData", "US", [int(v) for v in data])
    return item


def save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def write_synthetic_set(root: Path) -> dict[str, Path]:
    """Write one file per synthetic case (plus bad inputs) under ``root``; returns name -> path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    files["window12"] = save(
        make_image(ramp(), bits_stored=12, WindowCenter=2048, WindowWidth=2000, RescaleSlope=1, RescaleIntercept=0),
        root / "window12.dcm",
    )
    files["multiwindow"] = save(
        make_image(ramp(), bits_stored=12, WindowCenter=[1000, 3000], WindowWidth=[500, 800]), root / "multiwindow.dcm"
    )
    signed = ramp(lo=-2000, hi=3000, dtype=np.int16)
    files["signed16"] = save(
        make_image(signed, bits_stored=16, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=-200, WindowWidth=3000),
        root / "sub" / "signed16.dcm",
    )
    lut = np.rint(65535 * (np.arange(4096) / 4095) ** 0.5).astype(np.uint16)
    files["voilut"] = save(
        make_image(ramp(), bits_stored=12, VOILUTSequence=Sequence([lut_item(lut, first_map=0, bits=16)])),
        root / "sub" / "voilut.dcm",
    )
    files["sigmoid"] = save(
        make_image(ramp(), bits_stored=12, WindowCenter=2048, WindowWidth=1500, VOILUTFunction="SIGMOID"),
        root / "sigmoid.dcm",
    )
    files["mono1"] = save(
        make_image(ramp(), bits_stored=12, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=4096),
        root / "mono1.dcm",
    )
    frames = np.stack([ramp(hi=255, dtype=np.uint8) // (k + 1) for k in range(3)])
    files["multiframe"] = save(make_image(frames, bits_stored=8), root / "sub" / "deeper" / "multiframe.dcm")
    rle = make_image(ramp(), bits_stored=12, WindowCenter=2048, WindowWidth=2000)
    rle.compress(RLELossless, encoding_plugin="pydicom")
    files["rle"] = save(rle, root / "window12_rle.dcm")
    files["noext"] = save(make_image(ramp(hi=255, dtype=np.uint8), bits_stored=8), root / "IM0001")
    files["acrnema"] = write_acr_nema(
        make_image(ramp(hi=1023), bits_stored=10, photometric="MONOCHROME1", WindowCenter=512, WindowWidth=1024),
        root / "acrnema.dcm",
    )
    files["no_pixels"] = save(make_sr(), root / "report_sr.dcm")
    trunc = root / "truncated.dcm"
    data = save(make_image(ramp(), bits_stored=12), trunc).read_bytes()
    trunc.write_bytes(data[: len(data) - 700])
    files["truncated"] = trunc
    files["empty"] = root / "empty.dcm"
    files["empty"].write_bytes(b"")
    files["not_dicom"] = root / "sub" / "photo.bin"
    files["not_dicom"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    files["ct"] = save(make_image(ramp(), bits_stored=12, Modality="CT", BodyPartExamined="HEAD"), root / "ct_head.dcm")
    return files


def write_acr_nema(ds: Dataset, path: Path, *, implicit: bool = True) -> Path:
    """No preamble, no file meta: like the 1990s ``CR-MONO1-10-chest``."""
    ds = ds.copy()
    del ds.file_meta
    ds.preamble = None
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    return path


def make_sr() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "SR"
    ds.PatientID = PHI_ID
    return ds
