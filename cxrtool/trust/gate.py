"""The DICOM header gate: refuse to vouch for a film whose header says it is not a frontal chest radiograph.

The checks are the ones ``prep dicom`` records in its manifest's ``checks`` column
(:func:`cxrtool.dicom.prepare.header_checks`: modality CR/DX/DR, body part chest, a chest view), plus
what a classifier of frontal films needs beyond them: a frontal view (PA/AP, as the training
films) and a monochrome photometric interpretation.  Missing tags pass (many valid files lack
them); present, unexpected values give the reason.  Raster images (PNG, JPEG) have no header and
always pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cxrtool.errors import ImageLoadError

if TYPE_CHECKING:
    from pydicom import Dataset

FRONTAL_VIEWS = frozenset({"PA", "AP", "AP SUPINE"})
MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})


def header_problems(ds: Dataset) -> list[str]:
    """Every reason this header is not a frontal chest radiograph's (empty: it passes)."""
    from cxrtool.dicom.prepare import header_checks, view_position

    problems = header_checks(ds)
    view = view_position(ds)
    if view and not any("view" in p for p in problems) and view not in FRONTAL_VIEWS:
        problems.append(f"view {view} is not frontal (PA/AP)")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric and photometric not in MONOCHROME:
        problems.append(f"photometric interpretation {photometric} is not monochrome")
    return problems


def header_reason(path: str | Path) -> str | None:
    """``"; "``-joined :func:`header_problems` of a DICOM file, or None (passes, or not a DICOM).

    Reads only the header (no pixels).  A file whose header cannot be read is left to the image
    loader, which names the reason in the error column.
    """
    from cxrtool.dicom.read import is_dicom, read_dataset

    if not is_dicom(path):
        return None
    try:
        ds = read_dataset(path, stop_before_pixels=True)
    except ImageLoadError:
        return None
    problems = header_problems(ds)
    return "; ".join(problems) if problems else None
