"""Builders of test inputs shared by the predict/bench tests (real files in tmp folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["covid", "normal", "viral_pneumonia"]


def _pattern(seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    """A distinct grey image per seed in [0, 1] (so a mixed-up row order would show)."""
    rng = np.random.default_rng(seed)
    img = np.tile(np.linspace(0, 1, w), (h, 1)) * rng.uniform(0.2, 1.0)
    img[rng.integers(0, h // 2) :, : rng.integers(4, w)] = rng.uniform()
    return img.clip(0, 1)


def write_good_images(folder: Path) -> list[Path]:
    """One file per raster mode the loader must accept; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    g = [_pattern(i) for i in range(9)]
    u8 = [(x * 255).astype(np.uint8) for x in g]
    u16 = [(x * 65535).astype(np.uint16) for x in g]
    files = {
        "l.png": Image.fromarray(u8[0], "L"),
        "rgb.jpg": Image.fromarray(np.stack([u8[1]] * 3, -1), "RGB"),
        "rgba.png": Image.fromarray(np.dstack([u8[2]] * 3 + [np.full_like(u8[2], 255)]), "RGBA"),
        "i16.png": Image.fromarray(u16[3]),
        "cmyk.jpg": Image.fromarray(np.stack([u8[4]] * 3, -1), "RGB").convert("CMYK"),
        "cmyk.tif": Image.fromarray(np.stack([u8[5]] * 3, -1), "RGB").convert("CMYK"),
        "i16.tif": Image.fromarray(u16[6]),
        "rgb.bmp": Image.fromarray(np.stack([u8[7]] * 3, -1), "RGB"),
        "sub/l.jpeg": Image.fromarray(u8[8], "L"),
    }
    out = []
    for name, im in files.items():
        path = folder / name
        path.parent.mkdir(exist_ok=True)
        im.save(path)
        out.append(path)
    assert Image.open(folder / "i16.png").mode.startswith("I")
    assert Image.open(folder / "cmyk.jpg").mode == "CMYK"
    return out


def write_bad_files(folder: Path) -> dict[Path, str]:
    """Broken inputs -> a word their error reason must contain."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    bad: dict[Path, str] = {}
    (folder / "zero.png").write_bytes(b"")
    bad[folder / "zero.png"] = "empty"
    buf = folder / "full.png"
    Image.fromarray((_pattern(1) * 255).astype(np.uint8)).save(buf)
    (folder / "truncated.png").write_bytes(buf.read_bytes()[:60])
    buf.unlink()
    bad[folder / "truncated.png"] = "unreadable image"
    (folder / "notes.png").write_text("this is not an image\n")
    bad[folder / "notes.png"] = "not a DICOM or a readable image"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Modality = "CR"
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.save_as(folder / "nopixels.dcm", enforce_file_format=True)
    bad[folder / "nopixels.dcm"] = "no pixel data"

    (folder / "gone.png").symlink_to(folder / "does-not-exist.png")  # unreadable, even as root
    bad[folder / "gone.png"] = "dangling symbolic link"
    return bad
