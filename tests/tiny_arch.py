"""``densenet_tiny``: a two-block DenseNet for fast plumbing tests, registered by the test session only.

Same layout and key names as the product's DenseNets, so every code path (init, neuron keeping,
resume, DDP, AMP) runs on it; it is not part of ``cxrtool``'s architecture registry.  Processes that
tests start themselves (``mp.spawn`` workers, ``python -c`` scripts) call :func:`register_tiny_arch`.
"""

from __future__ import annotations

TINY_ARCH = "densenet_tiny"


def densenet_tiny(*, num_classes: int, in_chans: int = 3):
    from torchvision.models import DenseNet

    from cxrtool.models.densenet import _wrap

    return _wrap(DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2), num_classes, in_chans)


def register_tiny_arch() -> None:
    from cxrtool.models.registry import register_arch

    register_arch(TINY_ARCH)(densenet_tiny)
