"""DICOM reading and rendering (the pixel pipeline lives in :mod:`cxrtool.dicom.pixels`)."""

from cxrtool.dicom.read import is_dicom, load_dicom_gray, read_dataset

__all__ = ["is_dicom", "load_dicom_gray", "read_dataset"]
