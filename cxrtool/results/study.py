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
#: Type 1 image attributes the SR's Image Library entry reads
IMAGE_REQUIRED = ("Rows", "Columns")
#: what a result says when the source's Specific Character Set is not one highdicom accepts: pydicom has
#: already decoded the values to text, and this is the encoding they are written back in
UTF8_CHARSET = "ISO_IR 192"


def study_reference(source: Dataset) -> Dataset:
    """A pixel-free copy of ``source`` with every attribute the result builders read (the source is untouched).

    Raises
    ------
    CxrError
        The source lacks a UID that a reference to it needs.
    """
    missing = [k for k in REQUIRED + IMAGE_REQUIRED if not str(source.get(k) or "").strip()]
    if missing:
        raise CxrError(f"no DICOM result: the film has no {', '.join(missing)}")
    if str(source.SOPClassUID) not in _image_sop_classes():
        raise CxrError(
            f"no DICOM result: SOP Class UID {source.SOPClassUID} is not an image storage class a result can refer to"
        )
    ref = Dataset()
    for elem in source:
        if elem.tag.group != 0x7FE0:  # pixel data stays behind
            ref.add(copy.deepcopy(elem))
    _drop_invalid_values(ref)  # a Modality of "dx" or over 16 characters goes here; nothing needs it (results/sr.py)
    _usable_charset(ref)
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


def _image_sop_classes() -> frozenset[str]:
    """SOP classes highdicom knows the modules of (it copies the patient and study modules by them)."""
    from highdicom._standard_utils import get_sop_class_iod_map  # what highdicom.base looks the source up in

    return frozenset(get_sop_class_iod_map())


def _usable_charset(ref: Dataset) -> None:
    """Replace a Specific Character Set highdicom refuses (``ISO_IR 999``) by UTF-8, in which the text is written."""
    from highdicom.enum import SpecificCharacterSetValues

    value = ref.get("SpecificCharacterSet")
    values = [value] if isinstance(value, str) else list(value or [])
    try:
        for v in values:
            SpecificCharacterSetValues(v)
    except ValueError:
        ref.SpecificCharacterSet = UTF8_CHARSET
