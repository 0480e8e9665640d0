"""DenseNet-121/201 with the classifier head written as modules.

torchvision's ``DenseNet.forward`` calls ``F.relu`` and ``F.adaptive_avg_pool2d`` functionally,
which LRP hooks cannot see (about 3.5% of relevance leaks there).  Here the head is
``relu -> pool -> flatten -> classifier`` as modules; outputs are identical to torchvision's and
the parameter names (``features.*``, ``classifier.*``) are the same, so torchvision state dicts
load unchanged.

:meth:`DenseNetClassifier.forward_features` returns the logits together with the pooled features
the out-of-distribution score (:mod:`cxrtool.trust`) is computed on; ``forward`` stays the plain
module chain that LRP and the ONNX logits output rely on.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
from torchvision.models import densenet121 as tv_densenet121
from torchvision.models import densenet201 as tv_densenet201


class DenseNetClassifier(nn.Sequential):
    """``features`` (torchvision's) followed by a module-form head ending in ``classifier``."""

    def __init__(self, features: nn.Sequential, num_features: int, num_classes: int):
        super().__init__(
            OrderedDict(
                features=features,
                relu=nn.ReLU(inplace=False),
                pool=nn.AdaptiveAvgPool2d(1),
                flatten=nn.Flatten(1),
                classifier=nn.Linear(num_features, num_classes),
            )
        )
        nn.init.constant_(self.classifier.bias, 0)

    def feature_layout(self) -> list[tuple[str, int]]:
        """``(depth name, width)`` of each block of :meth:`forward_features`' feature vector, in order.

        One block per transition layer (global-average-pooled output) and ``penultimate`` (the pooled
        input of ``classifier``): early depths see texture and contrast, the last one the content.
        """
        layout = [
            (name, m.conv.out_channels) for name, m in self.features.named_children() if name.startswith("transition")
        ]
        return [*layout, ("penultimate", self.classifier.in_features)]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, features)``: the same logits as ``forward`` plus the concatenated pooled features.

        Features are (N, sum of :meth:`feature_layout` widths) float, computed in the same pass.
        """
        pooled = []
        for name, module in self.features.named_children():
            x = module(x)
            if name.startswith("transition"):
                pooled.append(x.mean((2, 3)))
        last = self.flatten(self.pool(self.relu(x)))
        return self.classifier(last), torch.cat([*pooled, last], 1)


def _wrap(tv_model: nn.Module, num_classes: int, in_chans: int) -> DenseNetClassifier:
    features = tv_model.features
    if in_chans != 3:
        old = features.conv0
        features.conv0 = nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        nn.init.kaiming_normal_(features.conv0.weight)
    return DenseNetClassifier(features, tv_model.classifier.in_features, num_classes)


def densenet121(*, num_classes: int, in_chans: int = 3) -> DenseNetClassifier:
    return _wrap(tv_densenet121(weights=None), num_classes, in_chans)


def densenet201(*, num_classes: int, in_chans: int = 3) -> DenseNetClassifier:
    return _wrap(tv_densenet201(weights=None), num_classes, in_chans)
