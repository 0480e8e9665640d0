"""The patient and study a result belongs to, taken from the source film's header.

Results go back into the film's own study, so this is the one place cxrtool copies patient data:
highdicom copies the Patient, General Study and Patient Study modules from the dataset returned
here.  Type 2 attributes a source lacks (old ACR-NEMA files have no Patient ID) are present but
empty, as the standard allows, instead of failing.
"""

from __future__ import annotations

import copy

from pydicom import Dataset

from cxrtool.errors import CxrError

#: Type 2 patient/study attributes highdicom reads from the reference dataset
TYPE2 = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def study_reference(source: Dataset) -> Dataset:
    """A pixel-free copy of ``source`` with every attribute the result builders read (the source is untouched).

    Raises
    ------
    CxrError
        The source lacks a UID that a reference to it needs.
    """
    missing = [k for k in REQUIRED if not str(source.get(k) or "").strip()]
    if missing:
        raise CxrError(f"no DICOM result: the film has no {', '.join(missing)}")
    ref = Dataset()
    for elem in source:
        if elem.tag.group != 0x7FE0:  # pixel data stays behind
            ref.add(copy.deepcopy(elem))
    _drop_invalid_values(ref)
    for keyword in TYPE2:
        if keyword not in ref or ref[keyword].value is None:
            setattr(ref, keyword, "")
    return ref


def _drop_invalid_values(ref: Dataset) -> None:
    """Remove copied values that break their VR (a Patient's Age of ``68`` instead of ``068Y``).

    A result must not repeat a source's encoding error, and cxrtool must not guess what was meant,
    so the value goes: Type 2 attributes become empty, others are left out.  The UIDs that refer to
    the film are kept whatever they are, since the result must name the film it describes.
    """
    from pydicom import config
    from pydicom.valuerep import validate_value

    for elem in list(ref):
        if elem.VR == "SQ" or elem.keyword in REQUIRED or elem.value in (None, ""):
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        try:
            for value in values:
                validate_value(elem.VR, value, config.RAISE)
        except ValueError:
            del ref[elem.tag]
