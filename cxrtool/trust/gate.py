"""The DICOM header gate: refuse to vouch for a film whose header says it is not a frontal chest radiograph.

The checks are the ones ``prep dicom`` records in its manifest's ``checks`` column
(:func:`cxrtool.dicom.prepare.header_checks`: modality CR/DX/DR, body part chest, a chest view), plus
what a classifier of frontal films needs beyond them: a frontal view (PA/AP, as the training
films) and a monochrome photometric interpretation.  Missing tags pass (many valid files lack
them); present, unexpected values give the reason.  Raster images (PNG, JPEG) have no header and
always pass.

A header that says the film is a lateral view (ViewPosition LL/RL/LATERAL..., or a
PatientOrientation whose row direction is anterior/posterior) is not a header problem but a view:
:func:`header_view` gives ``lateral`` and the film is flagged ``view:lateral``, as the image rules
of :mod:`cxrtool.trust.view` would flag it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtool.errors import ImageLoadError

if TYPE_CHECKING:
    from pydicom import Dataset

FRONTAL_VIEWS = frozenset({"PA", "AP", "AP SUPINE"})
MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD", "PA LATERAL"})


@dataclass(frozen=True)
class HeaderVerdict:
    """What a DICOM header says: why it is not a frontal chest radiograph's, and whether it names a lateral view."""

    reason: str | None = None
    view: str | None = None


def header_view(ds: Dataset) -> str | None:
    """``lateral`` when the header names a lateral view, else None (frontal, or not said)."""
    from cxrtool.dicom.prepare import view_position
    from cxrtool.trust.view import LATERAL

    if view_position(ds) in LATERAL_VIEWS:
        return LATERAL
    orientation = ds.get("PatientOrientation")
    if orientation is not None and not isinstance(orientation, str | bytes) and len(orientation) == 2:
        row = str(orientation[0]).strip().upper()[:1]
        if row in ("A", "P"):  # the image's rows run front-to-back: a lateral projection
            return LATERAL
    return None


def header_problems(ds: Dataset) -> list[str]:
    """Every reason this header is not a frontal chest radiograph's (empty: it passes).

    A lateral view is no problem here: :func:`header_view` reports it.
    """
    from cxrtool.dicom.prepare import header_checks, view_position

    problems = header_checks(ds)
    view = view_position(ds)
    if view and not any("view" in p for p in problems) and view not in FRONTAL_VIEWS | LATERAL_VIEWS:
        problems.append(f"view {view} is not frontal (PA/AP)")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric and photometric not in MONOCHROME:
        problems.append(f"photometric interpretation {photometric} is not monochrome")
    return problems


def header_verdict(path: str | Path) -> HeaderVerdict | None:
    """:func:`header_problems` (``"; "``-joined) and :func:`header_view` of a DICOM file; None for other files.

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
    return HeaderVerdict("; ".join(problems) if problems else None, header_view(ds))
