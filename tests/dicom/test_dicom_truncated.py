"""Truncated DICOMs say so, with the number of bytes missing where the header tells, never "not a DICOM"."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dicom_synth import make_image, ramp, save

from cxrtool.dicom.prepare import PrepOptions, prepare_file
from cxrtool.dicom.read import load_dicom_gray, read_dataset
from cxrtool.errors import ImageLoadError


@pytest.fixture()
def whole(tmp_path: Path) -> bytes:
    return save(make_image(ramp(32, 48), bits_stored=12), tmp_path / "whole.dcm").read_bytes()


def _reason(path: Path) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_dicom_gray(path)
    return info.value.reason


@pytest.mark.parametrize("missing", [1, 100, 32 * 48 * 2 - 1])
def test_cut_in_pixel_data_counts_missing_bytes(whole, tmp_path, missing):
    path = tmp_path / "cut.dcm"
    path.write_bytes(whole[:-missing])
    assert _reason(path) == f"truncated ({missing:,} bytes missing)"


def test_cut_inside_an_element_header(whole, tmp_path):
    at = whole.index(b"\x28\x00\x10\x00")  # (0028,0010) Rows
    path = tmp_path / "cut.dcm"
    path.write_bytes(whole[: at + 5])
    assert _reason(path) == "truncated (the file ends inside an element header)"


def test_cut_inside_the_file_meta(whole, tmp_path):
    path = tmp_path / "cut.dcm"
    path.write_bytes(whole[:170])  # past the group length element (132 + 12 bytes), before the meta ends
    assert _reason(path).startswith("truncated inside the file meta (")


def test_garbage_length_is_not_called_a_cut(whole, tmp_path):
    data = bytearray(whole)
    at = data.index(b"\xe0\x7f\x10\x00OW")  # Pixel Data, explicit VR: 2 reserved bytes, then a 4-byte length
    data[at + 8 : at + 12] = (2**32 - 2).to_bytes(4, "little")
    path = tmp_path / "garbage.dcm"
    path.write_bytes(bytes(data))
    assert _reason(path).startswith("corrupt or truncated: element (7FE0,0010) claims 4,294,967,294 bytes")


def test_prep_dicom_fails_truncated_header_instead_of_skipping(whole, tmp_path):
    """A header cut before Pixel Data used to be skipped as "no pixel data (not an image object)"."""
    at = whole.index(b"\x28\x00\x10\x00")
    src = tmp_path / "cut.dcm"
    src.write_bytes(whole[: at + 5])
    (row,) = prepare_file(
        src,
        tmp_path / "out" / "cut.png",
        options=PrepOptions(keep_phi=True),
        input_name="cut.dcm",
        out_root=tmp_path / "out",
    )
    assert row["status"] == "failed" and row["error"].startswith("truncated")


def test_real_files_cut(shared_data, tmp_path):
    chest = shared_data / "dicom" / "chest"
    cases = {
        "CR-MONO1-10-chest.dcm": (10_000, "truncated (10,000 bytes missing)"),  # meta-less ACR-NEMA, native pixels
        "rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm": (50_000, "truncated inside the pixel data"),  # JPEG fragments
    }
    for name, (cut, reason) in cases.items():
        data = (chest / name).read_bytes()
        path = tmp_path / name
        path.write_bytes(data[:-cut])
        assert _reason(path).startswith(reason), name
    shutil.copyfile(chest / "udacity_nih_test1.dcm", tmp_path / "whole.dcm")
    assert read_dataset(tmp_path / "whole.dcm").Rows == 1024  # an intact file is not flagged
