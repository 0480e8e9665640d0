"""``evaluate`` never turns a non-finite model output into a metric: such a film is an error row."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrtool.errors import CxrError

CLASSES = ["covid", "normal", "viral_pneumonia"]


def _checkpoint(path: Path, arch: str, *, nan_bias: bool) -> Path:
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(arch, num_classes=len(CLASSES))
    if nan_bias:
        head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            head.bias.fill_(float("nan"))
    card = ModelCard(arch=arch, task="multiclass", class_names=CLASSES, preprocess=PreprocessCfg(input_size=32))
    return save_checkpoint(path, model, card)


def test_nan_outputs_are_errors_not_metrics(covid_small: Path, tiny_arch: str, tmp_path: Path) -> None:
    from cxrtool.train.evaluate import evaluate

    broken = _checkpoint(tmp_path / "broken.safetensors", tiny_arch, nan_bias=True)
    with pytest.raises(CxrError, match="not finite"):
        evaluate(broken, covid_small, tmp_path / "eval", split="test", bootstrap=0, workers=0)
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_finite_outputs_give_metrics_and_the_file_sha(covid_small: Path, tiny_arch: str, tmp_path: Path) -> None:
    import hashlib
    import json

    from cxrtool.train.evaluate import evaluate

    good = _checkpoint(tmp_path / "good.safetensors", tiny_arch, nan_bias=False)
    evaluate(good, covid_small, tmp_path / "eval", split="test", bootstrap=0, workers=0)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["failed"] == 0
    assert metrics["checkpoint_sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
