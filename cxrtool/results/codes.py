"""Coded concepts the results use: standard codes where DICOM has one, a private scheme otherwise.

Standard: TID 1500 titles and observer types (DCM), SNOMED CT for the three fixture classes, UCUM
``1`` for probabilities.  Model-specific concepts (a probability *of a class*, the input check) use
the private scheme ``99CXRTOOL``, declared in every SR's Coding Scheme Identification Sequence.
"""

from __future__ import annotations

import re

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

SCHEME = "99CXRTOOL"
SCHEME_NAME = "cxrtool result concepts"

#: chest X-ray procedure reported (SNOMED CT 399208008 "Plain chest X-ray")
PLAIN_CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
FINDING = CodedConcept.from_code(codes.DCM.Finding)
#: CID 7181 "no units" (UCUM 1): a probability is a ratio
UNIT_ONE = CodedConcept.from_code(codes.UCUM.NoUnits)

OOD_SCORE = CodedConcept("OODSCORE", SCHEME, "Out-of-distribution score")
INPUT_CHECK = CodedConcept("INPUTCHECK", SCHEME, "Input check")

#: class names the fixtures' models use -> SNOMED CT findings
_SNOMED = {
    "covid": ("840539006", "COVID-19"),
    "viralpneumonia": ("75570004", "Viral pneumonia"),
    "normal": ("17621005", "Normal"),
}


def _key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return "covid" if key in ("covid19", "covid") else key


def class_concept(name: str, index: int) -> CodedConcept:
    """A class as a coded finding: SNOMED CT when the name is a known one, ``99CXRTOOL C<i>`` otherwise."""
    known = _SNOMED.get(_key(name))
    if known:
        return CodedConcept(known[0], "SCT", known[1])
    return CodedConcept(f"C{index}", SCHEME, name[:64])


def probability_concept(name: str, index: int) -> CodedConcept:
    """``99CXRTOOL P<i>`` "Probability of <class>": one numeric measurement per class."""
    return CodedConcept(f"P{index}", SCHEME, f"Probability of {name}"[:64])


def flag_concept(flag: str) -> CodedConcept:
    """The input-check outcome: ``ok``, ``out_of_distribution``, ``header:<reason>`` or ``view:<view>``."""
    kind = flag.split(":", 1)[0].strip().lower()
    value = {"ok": "OK", "out_of_distribution": "OOD", "header": "HEADER", "view": "VIEW"}.get(kind, "OTHER")
    return CodedConcept(value, SCHEME, flag[:64] or kind)
