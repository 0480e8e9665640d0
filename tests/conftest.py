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


@pytest.fixture(scope="session", autouse=True)
def tiny_arch() -> str:
    """Register ``densenet_tiny`` (tests only; the product's registry ships DenseNet-121/201)."""
    from tiny_arch import TINY_ARCH, register_tiny_arch

    register_tiny_arch()
    return TINY_ARCH


@pytest.fixture()
def gradient_image() -> np.ndarray:
    """A 40x60 grey ramp in [0, 1] with a bright square: cheap, deterministic, asymmetric."""
    img = np.tile(np.linspace(0, 1, 60, dtype=np.float32), (40, 1))
    img[5:15, 5:15] = 1.0
    return img


@pytest.fixture(scope="session")
def trained_checkpoint(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``best.safetensors`` of a DenseNet-121 trained for real epochs on covid3_256 at 64 px.

    Goes through the real pipeline: ``prep_folder`` (group-aware splits: the fixtures' patient ids
    and near-duplicate groups never cross splits) and ``cxrtool.train.loop.fit``.  About 1-2 min on
    2 idle cores, once per test session.  Asserts a clearly-better-than-chance validation accuracy,
    so a broken trainer cannot hand the tests a random model.
    """
    from cxrtool.prep.folder import FolderOptions, prep_folder
    from cxrtool.train.config import TrainConfig
    from cxrtool.train.loop import fit

    root = tmp_path_factory.mktemp("trained_checkpoint")
    manifest = root / "covid3.csv"
    groups = FolderOptions(groups=shared_data / "covid3" / "manifest.csv", groups_path_col="file_256")
    prep_folder(shared_data / "covid3_256", manifest, groups, salt="tests")
    cfg = TrainConfig(
        manifest=str(manifest),
        out_dir=str(root / "run"),
        init="none",
        input_size=64,
        epochs=7,
        batch_size=32,
        lr=2e-3,
        monitor="accuracy",
        seed=0,
        workers=0,
        device="cpu",
    )
    result = fit(cfg)
    assert result.status == "completed", result.status
    assert result.best_value is not None and result.best_value >= 0.7, (
        f"val accuracy {result.best_value}: training is broken"
    )
    return root / "run" / "best.safetensors"
