"""Fixtures for the hardening tests: the awkward-input corpus and a tiny checkpoint to run it through."""

from __future__ import annotations

from pathlib import Path

import pytest
from corpus import Case, build_corpus

CLASSES = ["covid", "normal", "viral_pneumonia"]


@pytest.fixture()
def corpus(tmp_path: Path) -> tuple[Path, list[Case]]:
    root = tmp_path / "awkward"
    return root, build_corpus(root)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tiny_arch: str) -> Path:
    """``densenet_tiny`` with seeded random weights at 32 px (the real checkpoint format, cheap to run)."""
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(tiny_arch, num_classes=len(CLASSES))
    card = ModelCard(arch=tiny_arch, task="multiclass", class_names=CLASSES, preprocess=PreprocessCfg(input_size=32))
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", model, card)
