"""What DCMTK decodes, cxrtool decodes: pydicom's own test files for the GDCM fallback and PALETTE COLOR.

``JPEG-lossy.dcm`` is 12-bit JPEG Extended with a misplaced SOS marker: pylibjpeg rejects it and
pydicom will not give 12-bit JPEG Extended to GDCM, so only :mod:`cxrtool.dicom.gdcm_fallback`
decodes it.  ``examples_palette.dcm`` is PALETTE COLOR, rendered to grey through pydicom's
``apply_color_lut`` and ITU-R 601 luma.  Both are compared with ``dcmj2pnm`` when DCMTK is installed.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxrtool.dicom.dcmtk import compare, dcmj2pnm_path, dcmtk_render
from cxrtool.dicom.decode import LUMA
from cxrtool.dicom.pixels import render
from cxrtool.dicom.read import load_dicom_gray, read_dataset

needs_dcmtk = pytest.mark.skipif(
    dcmj2pnm_path() is None, reason="DCMTK's dcmj2pnm is not installed (apt-get install dcmtk)"
)


def pydicom_test_file(name: str) -> str:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not shipped with this pydicom")
    return path


class TestGdcmFallback:
    def test_pydicom_alone_cannot_decode_it(self):
        """The reason the fallback exists: every plugin pydicom offers fails on this file."""
        from pydicom.pixels import pixel_array

        ds = read_dataset(pydicom_test_file("JPEG-lossy.dcm"))
        for plugin in ("pylibjpeg", "gdcm", "pillow"):
            with pytest.raises(Exception):  # noqa: B017 (each plugin fails in its own words)
                pixel_array(ds, decoding_plugin=plugin)

    def test_decodes_12_bit_jpeg_extended(self):
        pytest.importorskip("gdcm")
        from pydicom.pixels import get_decoder, pixel_array
        from pydicom.uid import JPEGExtended12Bit

        from cxrtool.dicom.gdcm_fallback import PLUGIN, register_fallback

        register_fallback()
        decoder = get_decoder(JPEGExtended12Bit)
        assert PLUGIN in decoder.available_plugins
        assert list(decoder._available)[-1] == PLUGIN  # pydicom tries plugins in this order: ours last
        ds = read_dataset(pydicom_test_file("JPEG-lossy.dcm"))
        raw = pixel_array(ds, decoding_plugin=PLUGIN)
        assert raw.shape == (1024, 256) and raw.dtype == np.uint16 and 0 < raw.max() < 2**12
        img = load_dicom_gray(pydicom_test_file("JPEG-lossy.dcm"))
        assert img.shape == (1024, 256) and img.min() == 0.0 and img.max() == 1.0 and img.std() > 0.05

    @needs_dcmtk
    def test_agrees_with_dcmtk(self):
        pytest.importorskip("gdcm")
        path = pydicom_test_file("JPEG-lossy.dcm")
        for window in ("dicom", "none"):
            result = compare(
                render(read_dataset(path), window=window)[0],
                dcmtk_render(path, window=window),
                file=path,
                window=window,
            )
            assert result.ok, result


class TestPaletteColor:
    def test_palette_becomes_luma_of_its_lut(self):
        from pydicom.pixels import apply_color_lut, pixel_array

        path = pydicom_test_file("examples_palette.dcm")
        ds = read_dataset(path)
        rgb = apply_color_lut(pixel_array(ds), ds).astype(np.float64)
        expected = (rgb @ LUMA) / (2 ** int(ds.RedPaletteColorLookupTableDescriptor[2]) - 1)
        img = load_dicom_gray(path)
        assert img.shape == (int(ds.Rows), int(ds.Columns))
        np.testing.assert_allclose(img, expected, atol=1e-6)
        assert len(np.unique(img)) > 16  # grey levels from the palette, not the raw indices scaled

    @needs_dcmtk
    def test_agrees_with_dcmtk_luma(self):
        path = pydicom_test_file("examples_palette.dcm")
        theirs = dcmtk_render(path, window="dicom")
        assert theirs.ndim == 3  # DCMTK writes the colours; reduce them the same way
        theirs_grey = np.rint(theirs.astype(np.float64) @ LUMA).astype(np.uint8)
        result = compare(render(read_dataset(path))[0], theirs_grey, file=path, window="dicom")
        assert result.ok, result
