"""DICOM reading and rendering (the pixel pipeline lives in :mod:`cxrtool.dicom.pixels`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxrtool.dicom.read import is_dicom, load_dicom_gray, read_dataset

__all__ = ["is_dicom", "load_dicom_gray", "read_dataset"]


def __getattr__(name: str) -> Any:
    """The names above, from :mod:`~cxrtool.dicom.read` on first use (PEP 562): ``prep dicom --help`` reads
    :mod:`~cxrtool.dicom.prepare`'s defaults without importing numpy and pydicom through this package."""
    if name in __all__:
        from cxrtool.dicom import read

        return getattr(read, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
