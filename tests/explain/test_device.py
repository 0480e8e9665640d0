"""``explain --device``: LRP runs where it is asked; a missing GPU is a usage error; CUDA matches the CPU (``gpu``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.explain.attribution import Explainer

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_arch, tmp_path_factory) -> Path:
    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    card = ModelCard(
        arch=tiny_arch,
        task="multiclass",
        class_names=["covid", "normal", "viral_pneumonia"],
        preprocess=PreprocessCfg(input_size=32),
    )
    return save_checkpoint(
        tmp_path_factory.mktemp("m") / "tiny.safetensors", build_model(tiny_arch, num_classes=3).eval(), card
    )


@pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_usage_error_before_any_work(shared_data, tiny_checkpoint, tmp_path):
    film = shared_data / "covid3/covid/k_train_010.png"
    out = tmp_path / "out"
    run = CliRunner().invoke(
        app, ["explain", str(film), "-m", str(tiny_checkpoint), "-o", str(out), "--device", "cuda"]
    )
    assert run.exit_code == 2, run.output
    assert "no CUDA device is available" in " ".join(run.output.split()) and "Traceback" not in run.output
    assert not (out / "explain.csv").exists()
    bad = CliRunner().invoke(app, ["explain", str(film), "-m", str(tiny_checkpoint), "-o", str(out), "--device", "tpu"])
    assert bad.exit_code == 2 and "device must be auto, cpu or cuda" in " ".join(bad.output.split())


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_cpu_and_auto_explain(shared_data, tiny_checkpoint, tmp_path, device):
    film = shared_data / "covid3/covid/k_train_010.png"
    run = CliRunner().invoke(
        app, ["explain", str(film), "-m", str(tiny_checkpoint), "-o", str(tmp_path), "--device", device]
    )
    assert run.exit_code == 0, run.output
    assert (tmp_path / "explain.csv").is_file() and list(tmp_path.glob("*.heatmap.npy"))


def test_explainer_results_come_back_on_the_cpu(tiny_densenet):
    x = torch.randn(2, 3, 32, 32)
    result = Explainer(tiny_densenet, "epsilon_plus_flat", device="cpu").attribute(x, [None, 1])
    assert result.logits.device.type == "cpu" and all(r.device.type == "cpu" for r in result.relevance)
    assert Explainer(tiny_densenet, device="cpu").device == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_lrp_on_cuda_matches_the_cpu(tiny_densenet, composite):
    """Same logits, relevance, bias share and features on the GPU as on the CPU (float tolerance; TF32 off)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    bounds = ((-2.2, -2.1, -1.9), (2.3, 2.5, 2.7))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cpu = Explainer(tiny_densenet, composite, bounds).attribute(x, [None, 2])
    gpu = Explainer(tiny_densenet, composite, bounds, device="cuda").attribute(x, [None, 2])
    torch.testing.assert_close(gpu.logits, cpu.logits, rtol=1e-4, atol=1e-4)
    for g, c in zip(gpu.relevance, cpu.relevance):
        assert g.device.type == "cpu"
        scale = c.abs().max()
        torch.testing.assert_close(g / scale, c / scale, rtol=1e-3, atol=1e-4)
    for g, c in zip(gpu.bias_share, cpu.bias_share):
        torch.testing.assert_close(g, c, rtol=1e-3, atol=1e-4)
    if cpu.features is not None:
        torch.testing.assert_close(gpu.features, cpu.features, rtol=1e-4, atol=1e-4)
