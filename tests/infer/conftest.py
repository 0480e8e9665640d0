"""Fixtures for predict/bench tests: a tiny checkpoint and folders of every input kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from infer_helpers import CLASSES, write_good_images


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    """DenseNet121 with seeded random weights at 32 px: the real architecture, cheap to run."""
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("densenet121", num_classes=len(CLASSES))
    card = ModelCard(
        arch="densenet121", task="multiclass", class_names=CLASSES, preprocess=PreprocessCfg(input_size=32)
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", model, card)


@pytest.fixture(scope="session")
def tiny_onnx(tiny_ckpt) -> Path:
    """The tiny checkpoint exported by part 1's exporter (slow: tens of seconds on 2 cores)."""
    pytest.importorskip("onnxruntime")
    from cxrtool.export.onnx import export_onnx

    return export_onnx(tiny_ckpt, tiny_ckpt.with_suffix(".onnx")).path


@pytest.fixture()
def good_folder(tmp_path) -> tuple[Path, list[Path]]:
    folder = tmp_path / "good"
    return folder, write_good_images(folder)


@pytest.fixture()
def real_dicoms(shared_data, tmp_path) -> list[Path]:
    """Real chest DICOMs: ACR-NEMA without preamble, implicit VR, and JPEG baseline copied without suffix.

    (JPEG 2000 decoding is covered by the DICOM tests; a 2k J2K film costs seconds here.)
    """
    chest = shared_data / "dicom" / "chest"
    nosuffix = tmp_path / "dicom" / "film_without_suffix"
    nosuffix.parent.mkdir()
    shutil.copyfile(chest / "rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm", nosuffix)
    return [chest / "CR-MONO1-10-chest.dcm", chest / "udacity_nih_test1.dcm", nosuffix]
