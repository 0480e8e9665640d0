"""The one input policy every command shares: pixel limit, regular files only, finite pixels, symlinks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from corpus import dicom_bytes, jpeg_huge_dims, nan_tiff, png_bomb, png_bytes

from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.images import load_image
from cxrtool.inputs import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    check_file,
    iter_input_files,
    max_pixels,
)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


class TestPixelLimit:
    def test_default_and_environment(self, monkeypatch):
        monkeypatch.delenv(MAX_PIXELS_ENV, raising=False)
        assert max_pixels() == DEFAULT_MAX_PIXELS
        monkeypatch.setenv(MAX_PIXELS_ENV, "1_000")
        assert max_pixels() == 1000

    @pytest.mark.parametrize("value", ["many", "-1", "0", "1e6"])
    def test_bad_environment_value_is_a_usage_error(self, value, monkeypatch):
        monkeypatch.setenv(MAX_PIXELS_ENV, value)
        with pytest.raises(CxrError, match=MAX_PIXELS_ENV) as info:
            max_pixels()
        assert not isinstance(info.value, ImageLoadError)

    @pytest.mark.parametrize("kind", ["png", "dicom"])
    def test_limit_applies_to_raster_and_dicom(self, kind, tmp_path, monkeypatch):
        path = _write(tmp_path / f"x.{kind}", png_bytes(40, 48) if kind == "png" else dicom_bytes(40, 48))
        assert load_image(path, limit=40 * 48).shape == (40, 48)  # exactly at the limit: fine
        with pytest.raises(ImageLoadError, match="too large"):
            load_image(path, limit=40 * 48 - 1)
        monkeypatch.setenv(MAX_PIXELS_ENV, "100")  # the environment is the default limit
        with pytest.raises(ImageLoadError, match=r"over the limit of 100 \(\$CXRTOOL_MAX_PIXELS\)"):
            load_image(path)

    @pytest.mark.parametrize(
        "data", [png_bomb(), png_bomb(200_000, 1_000), jpeg_huge_dims()], ids=["png", "wide-png", "jpeg"]
    )
    def test_bombs_are_load_errors(self, data, tmp_path):
        with pytest.raises(ImageLoadError, match="image too large"):
            load_image(_write(tmp_path / "bomb", data))

    def test_dicom_header_bomb(self, tmp_path):
        from corpus import _patch_dims

        path = _write(tmp_path / "bomb.dcm", _patch_dims(dicom_bytes(), 60_000, 60_000))
        with pytest.raises(ImageLoadError, match="60000x60000 = 3,600,000,000 values"):
            load_image(path)

    def test_compressed_frame_bigger_than_its_header(self, shared_data, tmp_path):
        """A JPEG frame whose own SOF claims 65000x65000 is refused before a decoder allocates it."""
        import struct

        data = bytearray(
            (shared_data / "dicom" / "chest" / "rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm").read_bytes()
        )
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", 65_000, 65_000)
        with pytest.raises(ImageLoadError, match="compressed frame: image too large"):
            load_image(_write(tmp_path / "jpeg_bomb.dcm", bytes(data)))


def test_non_finite_pixels_are_refused(tmp_path):
    with pytest.raises(ImageLoadError, match="not finite"):
        load_image(_write(tmp_path / "nan.tif", nan_tiff()))


class TestCheckFile:
    def test_reasons(self, tmp_path):
        loop, dangling, fifo, empty = tmp_path / "loop", tmp_path / "dangling", tmp_path / "fifo", tmp_path / "empty"
        os.symlink("loop", loop)
        os.symlink("nowhere", dangling)
        os.mkfifo(fifo)
        empty.write_bytes(b"")
        expected = {
            loop: "symbolic link loop",
            dangling: "dangling symbolic link",
            fifo: "not a regular file",
            empty: "empty file (0 bytes)",
            tmp_path: "is a folder",
        }
        for path, reason in expected.items():
            with pytest.raises(ImageLoadError) as info:
                check_file(path)
            assert info.value.reason.startswith(reason) and info.value.path == str(path)
        assert check_file(_write(tmp_path / "ok", b"x" * 7)) == 7

    def test_fifo_does_not_block_the_loader(self, tmp_path):
        """Opening a FIFO would wait forever for a writer; the policy refuses it before any open."""
        os.mkfifo(tmp_path / "pipe.png")
        with pytest.raises(ImageLoadError, match="not a regular file"):
            load_image(tmp_path / "pipe.png")


def test_folder_walk_yields_links_to_folders_and_terminates(tmp_path):
    (tmp_path / "a").mkdir()
    _write(tmp_path / "a" / "x.png", png_bytes())
    os.symlink("..", tmp_path / "a" / "up")  # a loop back to the root
    os.symlink("self", tmp_path / "self")  # a link to itself
    found = sorted(p.relative_to(tmp_path).as_posix() for p in iter_input_files([tmp_path]))
    assert found == ["a/up", "a/x.png", "self"]
    reasons = {}
    for p in iter_input_files([tmp_path]):
        try:
            load_image(p)
        except ImageLoadError as exc:
            reasons[p.name] = exc.reason
    assert reasons == {"up": "symbolic link to a folder (not followed inside a folder)", "self": "symbolic link loop"}


def test_load_image_returns_finite_unit_float(tmp_path):
    img = load_image(_write(tmp_path / "ok.png", png_bytes()))
    assert img.dtype == np.float32 and np.isfinite(img).all() and 0.0 <= img.min() <= img.max() <= 1.0


def _deflated(payload: bytes) -> bytes:
    """A Part 10 file in Deflated Explicit VR Little Endian whose data set is ``payload`` deflated."""
    import io
    import zlib

    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import (
        ComputedRadiographyImageStorage,
        DeflatedExplicitVRLittleEndian,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return buf.getvalue() + deflater.compress(payload) + deflater.flush()


def test_deflate_bomb_is_refused_before_pydicom_inflates_it(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")  # bound: 4 * 1000 + 16 MiB inflated bytes
    bomb = _write(tmp_path / "bomb.dcm", _deflated(b"\x00" * 40 * 2**20))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(ImageLoadError, match="inflates to more than 16,781,216 bytes"):
        load_image(bomb)


def test_small_deflated_file_still_reads(tmp_path):
    """The guard only counts: a real deflated data set goes on to pydicom as before."""
    import io

    from pydicom import dcmread

    from cxrtool.dicom.read import read_dataset

    ds = dcmread(io.BytesIO(dicom_bytes()))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    assert read_dataset(tmp_path / "deflated.dcm").Rows == 32
    assert load_image(tmp_path / "deflated.dcm").shape == (32, 40)
