"""Fixtures for the DICOMweb tests: a real Orthanc + DICOMweb plugin, a tiny real checkpoint, fixture films."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicomweb_helpers import CLASSES, start_orthanc, stop_orthanc


@pytest.fixture()
def orthanc(tmp_path):
    """Orthanc with the DICOMweb plugin at ``/dicom-web/``, no authentication, on free loopback ports."""
    server, proc, log = start_orthanc(tmp_path / "orthanc")
    try:
        yield server
    finally:
        stop_orthanc(proc, log)


@pytest.fixture(scope="session")
def tiny_web_ckpt(tmp_path_factory, tiny_arch) -> Path:
    """``densenet_tiny`` with seeded random weights at 32 px: the real code path, milliseconds per film."""
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    torch.manual_seed(2)
    model = build_model(tiny_arch, num_classes=len(CLASSES))
    card = ModelCard(arch=tiny_arch, task="multiclass", class_names=CLASSES, preprocess=PreprocessCfg(input_size=32))
    return save_checkpoint(tmp_path_factory.mktemp("dicomweb_model") / "tiny.safetensors", model, card)


@pytest.fixture()
def chest_films(shared_data) -> list[Path]:
    """Small real chest films (~100 KB): JPEG baseline CR, uncompressed CR, and an ACR-NEMA CR without file meta."""
    chest = shared_data / "dicom" / "chest"
    return [
        chest / "rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm",
        chest / "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
        chest / "CR-MONO1-10-chest.dcm",
    ]
