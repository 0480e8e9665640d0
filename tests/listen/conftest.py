"""Fixtures for the listen tests: a tiny real checkpoint and small real chest films."""

from __future__ import annotations

from pathlib import Path

import pytest
from listen_helpers import CLASSES


@pytest.fixture(scope="session")
def tiny_listen_ckpt(tmp_path_factory, tiny_arch) -> Path:
    """``densenet_tiny`` with seeded random weights at 32 px: the real code path, milliseconds per film."""
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(tiny_arch, num_classes=len(CLASSES))
    card = ModelCard(arch=tiny_arch, task="multiclass", class_names=CLASSES, preprocess=PreprocessCfg(input_size=32))
    return save_checkpoint(tmp_path_factory.mktemp("listen_model") / "tiny.safetensors", model, card)


@pytest.fixture()
def chest_films(shared_data) -> list[Path]:
    """Small real chest films: ACR-NEMA CR (no meta), JPEG baseline CR, implicit-VR DX."""
    chest = shared_data / "dicom" / "chest"
    return [
        chest / "CR-MONO1-10-chest.dcm",
        chest / "rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm",
        chest / "udacity_nih_test1.dcm",
    ]
