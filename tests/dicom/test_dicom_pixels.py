"""One test class per pixel step (pydicom's tests/pixels/test_processing.py layout)."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_synth import lut_item, make_image, ramp
from pydicom import Dataset
from pydicom.sequence import Sequence

from cxrtool.dicom.pixels import (
    Lut,
    apply_modality,
    apply_voi,
    invert_monochrome1,
    modality_range,
    render,
    render_unit,
    resize_long_side,
    select_voi,
    to_uint,
)


def plain(**tags: object) -> Dataset:
    ds = Dataset()
    ds.BitsStored = 12
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


class TestModality:
    def test_slope_intercept(self):
        out = apply_modality(np.array([0, 10, 100]), plain(RescaleSlope=0.5, RescaleIntercept=-3))
        np.testing.assert_allclose(out, [-3.0, 2.0, 47.0])

    def test_unchanged_without_module(self):
        arr = np.array([1, 2, 3], dtype=np.uint16)
        assert apply_modality(arr, plain()) is arr

    def test_modality_lut_sequence_clips_both_ends(self):
        table = np.array([100, 200, 300, 400])
        ds = plain(ModalityLUTSequence=Sequence([lut_item(table, first_map=10, bits=16)]))
        out = apply_modality(np.array([0, 10, 11, 13, 50]), ds)
        np.testing.assert_array_equal(out, [100, 100, 200, 400, 400])

    def test_lut_wins_over_rescale(self):
        ds = plain(
            RescaleSlope=2,
            RescaleIntercept=0,
            ModalityLUTSequence=Sequence([lut_item(np.array([7, 8]), first_map=0, bits=8)]),
        )
        np.testing.assert_array_equal(apply_modality(np.array([0, 1]), ds), [7, 8])

    def test_first_map_signed_only_for_signed_input(self):
        item = lut_item(np.array([1, 2, 3]), first_map=-1, bits=8)  # stored as US 65535
        lut = Lut.from_item(item, signed_input=True)
        assert lut.first_map == -1
        np.testing.assert_array_equal(lut(np.array([-1, 0, 1])), [1, 2, 3])
        assert Lut.from_item(item).first_map == 65535

    def test_range_follows_bits_sign_and_rescale(self):
        assert modality_range(plain()) == (0.0, 4095.0)
        signed = plain(BitsStored=16, PixelRepresentation=1, RescaleSlope=1, RescaleIntercept=-1024)
        assert modality_range(signed) == (-32768.0 - 1024, 32767.0 - 1024)
        assert modality_range(plain(RescaleSlope=-1, RescaleIntercept=0)) == (-4095.0, 0.0)


class TestVoi:
    def test_linear_window_borders_follow_the_standard(self):
        c, w = 100.0, 51.0  # window [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] = [74.5, 124.5]
        ds = plain(WindowCenter=c, WindowWidth=w)
        out = apply_voi(np.array([0.0, 74.5, 99.5, 124.5, 200.0]), ds)
        np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])

    def test_first_window_when_several(self):
        ds = plain(WindowCenter=[100, 1000], WindowWidth=[11, 500])
        assert select_voi(ds).center == 100
        assert select_voi(ds, index=1).width == 500
        assert apply_voi(np.array([94.0, 99.5, 105.0]), ds).tolist() == [0.0, 0.5, 1.0]

    def test_sigmoid(self):
        ds = plain(WindowCenter=50, WindowWidth=20, VOILUTFunction="SIGMOID")
        out = apply_voi(np.array([50.0, 60.0, -1e6]), ds)
        np.testing.assert_allclose(out, [0.5, 1 / (1 + np.exp(-2.0)), 0.0])

    def test_linear_exact(self):
        ds = plain(WindowCenter=50, WindowWidth=20, VOILUTFunction="LINEAR_EXACT")
        np.testing.assert_allclose(apply_voi(np.array([40.0, 45.0, 60.0]), ds), [0.0, 0.25, 1.0])

    def test_voi_lut_sequence_scaled_by_its_bit_depth(self):
        table = np.array([0, 1000, 65535])
        ds = plain(VOILUTSequence=Sequence([lut_item(table, first_map=5, bits=16)]), WindowCenter=1, WindowWidth=1)
        assert select_voi(ds).kind == "lut"  # the LUT wins over a window
        np.testing.assert_allclose(apply_voi(np.array([0, 6, 9]), ds), [0.0, 1000 / 65535, 1.0])

    def test_lut_depth_widened_when_data_exceed_descriptor(self):
        lut = Lut.from_item(lut_item(np.array([0, 4095]), first_map=0, bits=8))
        assert lut.bits == 12

    def test_no_voi_falls_back_to_minmax(self):
        voi = select_voi(plain())
        assert (voi.kind, voi.note) == ("minmax", "no VOI in file")
        np.testing.assert_allclose(apply_voi(np.array([10, 20, 30]), plain()), [0.0, 0.5, 1.0])

    def test_invalid_width_falls_back(self):
        assert "invalid window width" in select_voi(plain(WindowCenter=10, WindowWidth=0.5)).describe()

    def test_minmax_ignores_file_window(self):
        out = apply_voi(np.array([10, 30]), plain(WindowCenter=0, WindowWidth=2), window="minmax")
        np.testing.assert_allclose(out, [0.0, 1.0])

    def test_none_scales_full_stored_range(self):
        out = apply_voi(np.array([0, 4095, 2047.5]), plain(WindowCenter=1, WindowWidth=2), window="none")
        np.testing.assert_allclose(out, [0.0, 1.0, 0.5])

    def test_unknown_policy(self):
        with pytest.raises(ValueError, match="window must be one of"):
            select_voi(plain(), window="auto")


class TestInvertMonochrome1:
    def test_inverts_mono1(self):
        np.testing.assert_allclose(
            invert_monochrome1(np.array([0.0, 0.25]), plain(PhotometricInterpretation="MONOCHROME1")), [1.0, 0.75]
        )

    def test_mono2_unchanged(self):
        arr = np.array([0.0, 0.25])
        assert invert_monochrome1(arr, plain()) is arr


class TestToUint:
    def test_8_and_16_bit_ends_and_rounding(self):
        assert to_uint(np.array([0.0, 1.0, 0.5, 1.7, -1.0]), 8).tolist() == [0, 255, 128, 255, 0]
        out = to_uint(np.array([0.0, 1.0]), 16)
        assert out.dtype == np.uint16 and out.tolist() == [0, 65535]

    def test_bad_bits(self):
        with pytest.raises(ValueError):
            to_uint(np.zeros(2), 12)


class TestResize:
    def test_long_side_and_aspect(self):
        assert resize_long_side(np.zeros((40, 60)), 30).shape == (20, 30)
        assert resize_long_side(np.zeros((60, 40)), 30).shape == (30, 20)

    def test_anti_aliased(self):
        checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float64)  # nearest would keep 0/1
        small = resize_long_side(checker, 16)
        assert abs(small.mean() - 0.5) < 0.02 and small.std() < 0.05


class TestRender:
    def test_signed_16_bit_with_rescale_and_window(self):
        arr = np.array([[-2000, -1000, 0, 3000]], dtype=np.int16)
        ds = make_image(
            arr, bits_stored=16, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=-1024, WindowWidth=2001
        )
        # modality values -3024, -2024, -1024, 1976 -> window [-2024.5, -24.5]
        assert render(ds)[0].tolist() == [[0, 0, 128, 255]]

    def test_order_modality_then_voi_then_invert(self):
        arr = np.array([[0, 50, 100]], dtype=np.uint16)
        ds = make_image(arr, bits_stored=12, photometric="MONOCHROME1", RescaleSlope=2, RescaleIntercept=0)
        ds.WindowCenter, ds.WindowWidth = 100.5, 200  # applies to modality values 0, 100, 200
        assert render(ds)[0].tolist() == [[255, 128, 0]]

    def test_multiframe_selects_frame(self):
        frames = np.stack([np.full((4, 4), v, dtype=np.uint8) for v in (10, 20, 30)])
        ds = make_image(frames, bits_stored=8)
        assert render(ds, window="none", frame=2)[0][0, 0] == 30
        with pytest.raises(ValueError, match="out of range"):
            render(ds, frame=3)[0]

    def test_16_bit_output_and_size(self):
        ds = make_image(ramp(), bits_stored=12, WindowCenter=2048, WindowWidth=4096)
        out = render(ds, bits=16, size=24)[0]
        assert out.dtype == np.uint16 and out.shape == (16, 24) and out.max() > 60000

    def test_render_unit_reports_voi(self):
        _, voi = render_unit(make_image(ramp(), bits_stored=12, WindowCenter=5, WindowWidth=10))
        assert voi.describe() == "window 5/10 LINEAR"
