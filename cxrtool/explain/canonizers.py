"""DenseNet canonizer: torchvision's DenseNet rewritten so that LRP conserves relevance.

zennit ships no DenseNet canonizer (zennit issue #165; PR #171 was closed unmerged), and its
``SequentialMergeBatchNorm`` pairs each dense layer's ``conv2`` with the *next* layer's ``norm1``
because DenseNet's batch norms mostly sit *after* a concatenation, not after a convolution.
Every batch norm of DenseNet-BC is accounted for, by one of two treatments, and no batch-norm
shift ever takes relevance (the same bias accounting everywhere):

1. ``features.norm0`` follows ``conv0`` and each dense layer's ``norm2`` follows its ``conv1``:
   merged *backwards* into that convolution (weights scaled, the shift becomes a bias), the
   textbook canonization (Montavon et al. 2019, "Layer-wise relevance propagation: an overview",
   sec. 10.2).  The composites then treat that bias as zennit's ``zero_params=['bias']`` does: it
   is left out of the rule's denominators, so it takes no relevance (:mod:`.composites`).  The
   scale sits inside the weights, so the rule sees the signs the network uses.
2. ``norm1`` of every dense layer, ``transitionK.norm`` and ``norm5`` follow a concatenation and
   precede a ReLU.  They cannot be merged backwards (each producer's channels are normalised
   differently by every consumer).  Merging them *forwards* through a threshold-ReLU into the next
   convolution (zennit PR #171's idea) is exact too, but it hands that convolution inputs of both
   signs, so z+ needs its positive and negative parts separately: twice the convolutions, which
   ``cxrtool explain``'s speed goal cannot afford.  They keep the identity relevance rule (zennit's
   ``Pass``) instead, which is what deep Taylor decomposition gives for an element-wise unit
   ``y = s*x + t`` feeding a ReLU: expanded at its switch-off root ``x0 = -t/s``,
   ``R_x = s*(x - x0) / y * R_y = R_y``.  Conservative, no stabiliser, right for either sign of
   ``s``, and the shift ``t`` takes no relevance: the same accounting as ``zero_params`` in 1.

One more rewrite makes the transitions stable: ``norm -> relu -> conv(1x1) -> avgpool(2)`` becomes
``norm -> relu -> avgpool(2) -> conv(1x1)``.  A 1x1 convolution and an average pool commute
exactly (both are linear and act on different axes), so outputs do not change; the pool's
``Norm`` rule then sees non-negative ReLU outputs instead of the convolution's signed ones (whose
near-zero window sums created and destroyed relevance), and the convolution runs on a quarter of
the pixels, which also makes the forward pass cheaper.

The merges set the batch norm's ``eps`` to zero while merged (the identity left behind otherwise
divides by ``sqrt(1 + eps)``; zennit PR #171, point 1), so the canonized network computes the same
outputs as the original to float rounding (tested to 1e-5).  Canonizers change modules in place
and ``remove()`` restores parameters, ``eps`` and module order exactly; cxrtool still only applies
them to a deep copy (zennit issue #237: merging plus parameter modifiers can corrupt the original).
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn
from zennit.canonizers import Canonizer, NamedMergeBatchNorm


def densenet_merge_pairs(model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
    """``(linear names, batch-norm name)`` pairs merged backwards: conv0/norm0 and every conv1/norm2.

    Raises
    ------
    TypeError
        If ``model`` has no torchvision-style DenseNet ``features.conv0``/``features.norm0``.
    """
    names = dict(model.named_modules())
    if "features.conv0" not in names or "features.norm0" not in names:
        raise TypeError("DenseNetCanonizer needs a DenseNet with features.conv0 and features.norm0")
    pairs: list[tuple[tuple[str, ...], str]] = [(("features.conv0",), "features.norm0")]
    for name, module in names.items():
        if name.rsplit(".", 1)[-1].startswith("denselayer") and hasattr(module, "conv1") and hasattr(module, "norm2"):
            pairs.append(((f"{name}.conv1",), f"{name}.norm2"))
    return pairs


def merged_convs(model: nn.Module) -> set[str]:
    """Names of the convolutions whose bias is a merged batch-norm shift (left out by the rules)."""
    return {linear for linears, _ in densenet_merge_pairs(model) for linear in linears}


def post_concat_norms(model: nn.Module) -> list[str]:
    """Names of the batch norms that follow a concatenation (kept, with the identity relevance rule)."""
    merged = {bn for _, bn in densenet_merge_pairs(model)}
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and name not in merged
    ]


def transitions(model: nn.Module) -> list[str]:
    """Names of DenseNet transition blocks (``norm, relu, conv, pool`` Sequentials)."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Sequential) and list(m._modules) == ["norm", "relu", "conv", "pool"]
    ]


class _ExactNamedMergeBatchNorm(NamedMergeBatchNorm):
    """``NamedMergeBatchNorm`` that also zeroes ``eps`` while merged, so outputs stay exactly equal."""

    def register(self, linears, batch_norm) -> None:  # noqa: ANN001 (zennit's signature)
        self.batch_norm_eps = batch_norm.eps
        super().register(linears, batch_norm)
        batch_norm.eps = 0.0

    def remove(self) -> None:
        super().remove()
        self.batch_norm.eps = self.batch_norm_eps


class PoolBeforeConv(Canonizer):
    """Run each transition's average pool before its 1x1 convolution (they commute); undone by ``remove()``."""

    def __init__(self) -> None:
        self.block: nn.Sequential | None = None
        self.order: list[str] = []

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """One registered instance per transition of ``root_module``."""
        handles = []
        for name in transitions(root_module):
            handle = PoolBeforeConv()
            handle.register(root_module.get_submodule(name))
            handles.append(handle)
        return handles

    def register(self, block: nn.Sequential | None = None) -> None:  # noqa: D417 (zennit's signature takes the module)
        """Reorder ``block`` to ``norm, relu, pool, conv``."""
        if block is None:
            return
        conv = block.conv
        if conv.kernel_size != (1, 1) or conv.stride != (1, 1) or conv.padding != (0, 0):
            raise TypeError("transition convolution is not a plain 1x1 convolution: pool and conv do not commute")
        self.block, self.order = block, list(block._modules)
        block._modules = OrderedDict((k, block._modules[k]) for k in ("norm", "relu", "pool", "conv"))

    def remove(self) -> None:
        """Restore the original module order."""
        if self.block is not None:
            self.block._modules = OrderedDict((k, self.block._modules[k]) for k in self.order)
            self.block = None


class DenseNetCanonizer(Canonizer):
    """zennit canonizer for torchvision DenseNets (and :class:`~cxrtool.models.densenet.DenseNetClassifier`).

    Merges ``norm0`` into ``conv0`` and each dense layer's ``norm2`` into its ``conv1``, and pools
    before convolving in the transitions; the batch norms after concatenations stay and get the
    ``Pass`` rule from the composite (see the module docstring for why).  Use it like any zennit
    canonizer: ``Composite(canonizers=[DenseNetCanonizer()])``; ``remove()`` on every returned
    handle restores every parameter, ``eps`` and the module order.
    """

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """Canonize ``root_module`` in place; return the handles that undo it."""
        merges = _ExactNamedMergeBatchNorm(densenet_merge_pairs(root_module)).apply(root_module)
        return merges + PoolBeforeConv().apply(root_module)

    def register(self) -> None:
        """Nothing to do: the handles returned by :meth:`apply` hold the state."""

    def remove(self) -> None:
        """Nothing to do: the handles returned by :meth:`apply` are removed individually."""
