"""A tiny real checkpoint, dciodvfy, and helpers to read result objects back."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CLASSES = ["covid", "normal", "viral_pneumonia"]


@pytest.fixture(scope="session")
def tiny_results_ckpt(tmp_path_factory, tiny_arch) -> Path:
    """``densenet_tiny`` with seeded random weights at 32 px (real forward, real LRP, milliseconds)."""
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    torch.manual_seed(1)
    model = build_model(tiny_arch, num_classes=len(CLASSES))
    card = ModelCard(arch=tiny_arch, task="multiclass", class_names=CLASSES, preprocess=PreprocessCfg(input_size=32))
    return save_checkpoint(tmp_path_factory.mktemp("results_model") / "tiny.safetensors", model, card)


@pytest.fixture(scope="session")
def dciodvfy():
    """Run dicom3tools' validator on a file: ``(errors, warnings)`` as lists of lines."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools; .ci/run installs it)")

    def run(path: Path) -> tuple[list[str], list[str]]:
        proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
        lines = (proc.stdout + proc.stderr).splitlines()
        return [line for line in lines if line.startswith("Error")], [
            line for line in lines if line.startswith("Warning")
        ]

    return run
