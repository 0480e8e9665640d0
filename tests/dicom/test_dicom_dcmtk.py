"""Agreement with DCMTK's dcmj2pnm (an independent implementation) within one grey level at 8 bits.

Same windowing on both sides (see :func:`cxrtool.dicom.dcmtk.window_args`): the file's window /
VOI LUT (``--use-window 1`` / ``--use-voi-lut 1``), ``--min-max-window`` and ``--no-windowing``.
"""

from __future__ import annotations

import pytest
from dicom_synth import write_synthetic_set

from cxrtool.dicom.dcmtk import compare, dcmj2pnm_path, dcmtk_render
from cxrtool.dicom.pixels import WINDOW_POLICIES, render
from cxrtool.dicom.read import read_dataset

pytestmark = pytest.mark.skipif(
    dcmj2pnm_path() is None, reason="DCMTK's dcmj2pnm is not installed (apt-get install dcmtk)"
)

JPEG2000 = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
REAL_FILES = [
    "chest/CR-MONO1-10-chest.dcm",
    "chest/RG1_J2KI.dcm",
    "chest/RG1_J2KR.dcm",
    "chest/RG1_UNCR.dcm",
    "chest/rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm",
    "chest/siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "chest/txv_Fake_MONOHR1.dcm",
    "chest/udacity_nih_test1.dcm",
    "derived/CR-MONO1-10-chest_J2KR_derived.dcm",
    "derived/CR-MONO1-10-chest_RLE_derived.dcm",
    "nonchest/CR-ModalitySequenceLUT.dcm",
    "nonchest/RG2_JPLL.dcm",
    "nonchest/RG3_RLE.dcm",
    "nonchest/pydicom_dicomdirtests_CR1_6154.dcm",
]
SYNTHETIC = [
    "window12",
    "multiwindow",
    "signed16",
    "voilut",
    "sigmoid",
    "mono1",
    "multiframe",
    "rle",
    "noext",
    "acrnema",
]


def assert_agrees(path, *, frame: int = 0) -> None:
    ds = read_dataset(path)
    for window in WINDOW_POLICIES:
        try:
            theirs = dcmtk_render(path, window=window, frame=frame)
        except RuntimeError as exc:
            if str(ds.file_meta.TransferSyntaxUID) in JPEG2000:
                pytest.skip(f"this DCMTK build has no JPEG 2000 decoder ({exc})")
            raise
        result = compare(render(ds, window=window, frame=frame)[0], theirs, file=path.name, window=window)
        assert result.ok, result


@pytest.mark.shared_data
@pytest.mark.parametrize("name", REAL_FILES)
def test_real_fixture_agrees_with_dcmtk(shared_data, name):
    assert_agrees(shared_data / "dicom" / name)


@pytest.fixture(scope="module")
def synthetic_files(tmp_path_factory):
    return write_synthetic_set(tmp_path_factory.mktemp("dcmtk"))


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_agrees_with_dcmtk(synthetic_files, name):
    assert_agrees(synthetic_files[name])


@pytest.mark.parametrize("frame", [1, 2])
def test_other_frames_agree_with_dcmtk(synthetic_files, frame):
    assert_agrees(synthetic_files["multiframe"], frame=frame)
