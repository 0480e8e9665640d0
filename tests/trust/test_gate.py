"""The DICOM header gate: prep dicom's checks plus frontal view and monochrome, on built and real headers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset

from cxrtool.trust.gate import (
    HeaderVerdict,
    header_problems,
    header_verdict,
    header_view,
)


def _header(**tags: str) -> Dataset:
    ds = Dataset()
    base = {
        "Modality": "DX",
        "BodyPartExamined": "CHEST",
        "ViewPosition": "PA",
        "PhotometricInterpretation": "MONOCHROME2",
    }
    for key, value in (base | tags).items():
        if value is not None:
            setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({"Modality": "CT"}, "modality CT is not CR/DX/DR"),
        ({"BodyPartExamined": "HAND"}, "body part HAND is not chest"),
        ({"ViewPosition": "DECUBITUS"}, "unusual view/position DECUBITUS"),
        ({"ViewPosition": "XX"}, "unusual view/position XX"),
        ({"PhotometricInterpretation": "RGB"}, "photometric interpretation RGB is not monochrome"),
    ],
)
def test_each_check_names_its_reason(tags: dict, reason: str) -> None:
    assert header_problems(_header(**tags)) == [reason]


def test_a_frontal_chest_header_and_missing_tags_pass() -> None:
    assert header_problems(_header()) == []
    assert header_problems(_header(ViewPosition="AP", Modality="CR", PhotometricInterpretation="MONOCHROME1")) == []
    assert header_problems(_header(Modality="DR")) == []
    assert header_problems(Dataset()) == []


def test_real_files(shared_data: Path, gradient_image) -> None:
    chest = shared_data / "dicom" / "chest"
    assert header_verdict(chest / "udacity_nih_test1.dcm") == HeaderVerdict()
    assert header_verdict(chest / "udacity_nih_test4.dcm").reason == "body part RIBCAGE is not chest"
    assert header_verdict(chest / "udacity_nih_test5.dcm").reason == "modality CT is not CR/DX/DR"
    assert header_verdict(chest / "udacity_nih_test6.dcm").reason == "unusual view/position XX"
    assert header_verdict(chest / "CR-MONO1-10-chest.dcm") == HeaderVerdict()  # ACR-NEMA, no file meta
    assert header_verdict(shared_data / "dicom" / "nonchest" / "RG2_JPLL.dcm").reason == "body part HIP is not chest"
    png = next((shared_data / "covid3_256" / "normal").glob("*.png"))
    assert header_verdict(png) is None  # raster images have no header to check


@pytest.mark.parametrize(
    ("tags", "view"),
    [
        ({"ViewPosition": "LL"}, "lateral"),
        ({"ViewPosition": "RL"}, "lateral"),
        ({"ViewPosition": "LATERAL"}, "lateral"),
        ({"PatientOrientation": ["P", "F"]}, "lateral"),  # rows run front-to-back
        ({"PatientOrientation": ["A", "FR"]}, "lateral"),
        ({"ViewPosition": "PA", "PatientOrientation": ["L", "F"]}, None),
        ({"ViewPosition": "AP"}, None),
        ({}, None),
    ],
)
def test_header_view(tags: dict, view: str | None) -> None:
    ds = _header(**tags)
    assert header_view(ds) == view
    # a lateral view is a view flag, not a header problem (the header is otherwise a chest radiograph's)
    if view:
        assert header_problems(ds) == []
