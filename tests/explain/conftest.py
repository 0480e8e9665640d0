"""Models for the explain tests: a tiny DenseNet (plumbing) and real films for the trained DenseNet-121."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrtool.models.densenet import DenseNetClassifier

CLASSES = ["covid", "normal", "viral_pneumonia"]


@pytest.fixture(scope="session")
def tiny_densenet() -> DenseNetClassifier:
    """Two blocks, growth 8, with non-trivial batch-norm statistics (some negative scales)."""
    from torchvision.models import DenseNet

    g = torch.Generator().manual_seed(0)
    tv = DenseNet(growth_rate=8, block_config=(2, 3), num_init_features=16, bn_size=2)
    model = DenseNetClassifier(tv.features, tv.classifier.in_features, 3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 1.6 - 0.3)
            m.bias.data.copy_((torch.rand(n, generator=g) - 0.5) * 0.6)
    model.classifier.bias.data.copy_(torch.tensor([0.05, -0.02, 0.01]))
    return model.eval()


@pytest.fixture(scope="session")
def held_out_films(trained_checkpoint: Path) -> tuple[list[Path], torch.Tensor]:
    """The trained model's validation and test films (never trained on) and their model inputs."""
    from cxrtool.images import load_image
    from cxrtool.models.checkpoint import load_checkpoint
    from cxrtool.preprocess import to_model_input

    _, card = load_checkpoint(trained_checkpoint)
    manifest = trained_checkpoint.parents[1] / "covid3.csv"
    with open(manifest, newline="", encoding="utf-8") as fh:
        paths = [(manifest.parent / r["path"]).resolve() for r in csv.DictReader(fh) if r["split"] in ("val", "test")]
    x = np.stack([to_model_input(load_image(p), card.preprocess) for p in paths])
    return paths, torch.from_numpy(x)
