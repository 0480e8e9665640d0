"""Models for the explain tests: a tiny DenseNet (plumbing) and a briefly trained DenseNet-121."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cxrtool.config import PreprocessCfg
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
def trained(shared_data: Path) -> tuple[DenseNetClassifier, PreprocessCfg, torch.Tensor]:
    """DenseNet-121 after a few Adam steps at 32 px on real covid3_256 films (BN statistics updated).

    Returns the model, its preprocessing and a held-out batch of 6 inputs.
    """
    from cxrtool.images import load_image
    from cxrtool.models import build_model
    from cxrtool.preprocess import to_model_input

    torch.manual_seed(0)
    cfg = PreprocessCfg(input_size=32)
    xs, ys = [], []
    for k, name in enumerate(CLASSES):
        for f in sorted((shared_data / "covid3_256" / name).glob("*.png"))[:6]:
            xs.append(to_model_input(load_image(f), cfg))
            ys.append(k)
    x, y = torch.from_numpy(np.stack(xs)), torch.tensor(ys)
    train = torch.arange(len(x)) % 3 != 0
    model = build_model("densenet121", num_classes=3)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(model(x[train]), y[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), cfg, x[~train]
