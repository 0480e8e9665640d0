"""Fixtures around :mod:`dicom_synth` (tiny synthetic DICOMs written by pydicom; no real patient data)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from dicom_synth import make_image, ramp, save, write_synthetic_set


@pytest.fixture()
def dicom_factory(tmp_path: Path) -> Callable[..., Path]:
    """``dicom_factory(name, **make_image kwargs)`` -> path of a written Part 10 file."""

    def factory(name: str, arr: np.ndarray | None = None, *, bits_stored: int = 12, **kw: object) -> Path:
        arr = ramp(hi=2**bits_stored - 1) if arr is None else arr
        return save(make_image(arr, bits_stored=bits_stored, **kw), tmp_path / name)

    return factory


@pytest.fixture()
def synthetic_dir(tmp_path: Path) -> Path:
    """A small tree with one file per case the real fixtures do not cover, plus bad inputs."""
    root = tmp_path / "src"
    write_synthetic_set(root)
    return root
