"""Detection by content, meta-less files, and the shared loader on DICOM (synthetic + real files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_synth import make_image, ramp, write_acr_nema

from cxrtool.dicom import is_dicom, load_dicom_gray, read_dataset
from cxrtool.dicom.pixels import render
from cxrtool.errors import ImageLoadError
from cxrtool.images import load_image

CHEST = Path("dicom") / "chest"


class TestDetection:
    def test_part10_without_suffix(self, synthetic_dir):
        assert is_dicom(synthetic_dir / "IM0001")

    @pytest.mark.parametrize("implicit", [True, False])
    def test_acr_nema_without_meta(self, tmp_path, implicit):
        path = write_acr_nema(make_image(ramp(), bits_stored=12), tmp_path / "old", implicit=implicit)
        assert path.read_bytes()[:2] == b"\x08\x00"  # no preamble
        assert is_dicom(path)
        ds = read_dataset(path)
        assert ds.file_meta.TransferSyntaxUID == ("1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1")
        np.testing.assert_array_equal(ds.pixel_array, ramp())

    @pytest.mark.parametrize(
        "content", [b"", b"\x89PNG\r\n\x1a\n" + bytes(300), b"path,label\na.png,covid\n", bytes(range(256)) * 4]
    )
    def test_non_dicom_rejected(self, tmp_path, content):
        path = tmp_path / "x.dcm"
        path.write_bytes(content)
        assert not is_dicom(path)


class TestLoadErrors:
    def test_zero_byte(self, synthetic_dir):
        with pytest.raises(ImageLoadError, match="empty file"):
            load_dicom_gray(synthetic_dir / "empty.dcm")

    def test_truncated(self, synthetic_dir):
        with pytest.raises(ImageLoadError) as info:
            load_dicom_gray(synthetic_dir / "truncated.dcm")
        assert "truncated.dcm" in str(info.value) and "\n" not in str(info.value)

    def test_no_pixel_data(self, synthetic_dir):
        with pytest.raises(ImageLoadError, match="no pixel data"):
            load_dicom_gray(synthetic_dir / "report_sr.dcm")

    def test_load_image_routes_dicom_by_content(self, synthetic_dir):
        img = load_image(synthetic_dir / "IM0001")
        assert img.dtype == np.float32 and img.shape == (32, 48) and img.min() == 0.0 and img.max() == 1.0


@pytest.mark.shared_data
class TestRealFiles:
    def test_acr_nema_chest(self, shared_data):
        path = shared_data / CHEST / "CR-MONO1-10-chest.dcm"
        assert path.read_bytes()[128:132] != b"DICM" and is_dicom(path)
        img = load_dicom_gray(path)
        assert img.shape == (440, 440)
        # MONOCHROME1: the (dense) mediastinum in the centre renders brighter than the lungs
        assert img[180:260, 200:240].mean() > img[150:250, 80:160].mean() + 0.1

    def test_same_pixels_whatever_the_encoding(self, shared_data):
        d = shared_data / "dicom"
        uncr = render(read_dataset(d / "chest" / "RG1_UNCR.dcm"))[0]
        np.testing.assert_array_equal(render(read_dataset(d / "chest" / "RG1_J2KR.dcm"))[0], uncr)
        acr = render(read_dataset(d / "chest" / "CR-MONO1-10-chest.dcm"))[0]
        for name in ("CR-MONO1-10-chest_J2KR_derived.dcm", "CR-MONO1-10-chest_RLE_derived.dcm"):
            np.testing.assert_array_equal(render(read_dataset(d / "derived" / name))[0], acr)

    def test_lossy_j2k_close_to_original(self, shared_data):
        d = shared_data / CHEST
        diff = np.abs(
            render(read_dataset(d / "RG1_J2KI.dcm"))[0].astype(int) - render(read_dataset(d / "RG1_UNCR.dcm"))[0]
        )
        assert diff.mean() < 0.5 and diff.max() <= 8

    def test_header_edited_mono1_is_inverted(self, shared_data):
        d = shared_data / CHEST
        siim = render(read_dataset(next(d.glob("siim_*.dcm"))))[0]
        fake = render(read_dataset(d / "txv_Fake_MONOHR1.dcm"))[0]
        assert np.abs(255 - siim.astype(int) - fake).max() <= 1  # rounding ties only


def test_doctor_reports_uncompressed_syntaxes_as_native():
    from cxrtool.envinfo import _dicom_rows

    rows = {name: (value, ok) for name, value, ok in _dicom_rows()}
    assert rows["Explicit VR Little Endian"] == ("native (pydicom, no plugin needed)", True)
    assert rows["Implicit VR Little Endian"][1] is True
    assert rows["JPEG 2000 Image Compression (Lossless Only)"][1] is True  # pylibjpeg-openjpeg is a dependency
