"""One tiny checkpoint and one real ONNX export (through the CLI) shared by the export tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cxrtool.config import PreprocessCfg
from cxrtool.modelfile import ModelCard
from cxrtool.models import build_model
from cxrtool.models.checkpoint import save_checkpoint

SIZE = 32


def make_checkpoint(path: Path, seed: int) -> Path:
    """DenseNet121 at 32 px with seeded random weights: real architecture, cheap to run."""
    torch.manual_seed(seed)
    model = build_model("densenet121", num_classes=3)
    card = ModelCard(
        arch="densenet121",
        task="multiclass",
        class_names=["covid", "normal", "viral_pneumonia"],
        preprocess=PreprocessCfg(input_size=SIZE),
    )
    return save_checkpoint(path, model, card)


@pytest.fixture(scope="package")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors", seed=0)


@pytest.fixture(scope="package")
def cli_export(checkpoint: Path, shared_data: Path):
    """``cxrtool export CKPT --onnx`` checked on 6 real covid3 films (the one slow step, ~30 s)."""
    from typer.testing import CliRunner

    from cxrtool.cli.main import app

    result = CliRunner().invoke(
        app, ["export", str(checkpoint), "--onnx", "--check-images", str(shared_data / "covid3"), "--check-count", "6"]
    )
    return result


@pytest.fixture(scope="package")
def onnx_file(cli_export, checkpoint: Path) -> Path:
    assert cli_export.exit_code == 0, cli_export.output
    path = checkpoint.parent / "engines" / "tiny.onnx"
    assert path.is_file()
    return path


@pytest.fixture(scope="package")
def real_batch(shared_data: Path) -> torch.Tensor:
    """Five real films (one per covid3 class folder and more), preprocessed like inference."""
    from cxrtool.export.parity import load_check_batch

    batch, skipped = load_check_batch([shared_data / "covid3"], PreprocessCfg(input_size=SIZE), limit=5)
    assert not skipped
    return batch
