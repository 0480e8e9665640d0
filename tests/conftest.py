"""Shared fixtures: the real data in ../shared/data (skipped when absent) and small synthetic images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRTOOL_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real fixture data; tests that use it skip cleanly on a fresh clone without it."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real fixture data not found at {SHARED_DATA} (set CXRTOOL_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture()
def gradient_image() -> np.ndarray:
    """A 40x60 grey ramp in [0, 1] with a bright square: cheap, deterministic, asymmetric."""
    img = np.tile(np.linspace(0, 1, 60, dtype=np.float32), (40, 1))
    img[5:15, 5:15] = 1.0
    return img
