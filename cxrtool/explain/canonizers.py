"""DenseNet canonizer: the batch norms of torchvision's DenseNet, rewritten for LRP.

zennit ships no DenseNet canonizer (zennit issue #165; PR #171 was closed unmerged), and its
``SequentialMergeBatchNorm`` pairs each dense layer's ``conv2`` with the *next* layer's ``norm1``
because DenseNet's batch norms mostly sit *after* a concatenation, not after a convolution.
DenseNet-BC has three kinds of batch norm, and each gets its own treatment:

1. ``features.norm0`` follows ``features.conv0``: merged into ``conv0`` (weights scaled, bias
   added), the textbook canonization (Montavon et al. 2019, "Layer-wise relevance propagation:
   an overview").
2. ``denseblockK.denselayerN.norm2`` follows that layer's ``conv1`` directly: merged into ``conv1``
   the same way.
3. ``norm1`` of every dense layer, ``transitionK.norm`` and ``norm5`` follow a concatenation and
   precede a ReLU.  They cannot be merged backwards (each producer's channels are normalised
   differently by every later consumer) and not forwards into the following 1x1 convolution
   either: the ReLU sits in between and ``relu(s*x + t) != s*relu(x) + t``.  We keep them and
   give them the identity relevance rule (zennit's ``Pass``), which is what Deep Taylor
   decomposition yields for an element-wise unit: ``y = s*x + t`` feeding a ReLU has one input,
   and expanding it at its switch-off root point ``x0 = -t/s`` gives
   ``R_x = s*(x - x0) / y * R_y = R_y`` exactly.  The rule is conservative, involves no
   stabiliser, and treats negative scales correctly (``s*(x-x0) = y`` for either sign of ``s``).

The merges in 1 and 2 also set the batch norm's ``eps`` to zero while merged (the identity left
behind otherwise divides by ``sqrt(1 + eps)``; zennit PR #171, point 1), so the canonized model
computes the same outputs as the original to float rounding.  Canonizers change parameters in
place: cxrtool only ever applies them to a deep copy (zennit issue #237: merging plus parameter
modifiers can corrupt the original's state dict).
"""

from __future__ import annotations

import torch.nn as nn
from zennit.canonizers import Canonizer, NamedMergeBatchNorm


def densenet_merge_pairs(model: nn.Module) -> list[tuple[tuple[str, ...], str]]:
    """``(linear names, batch-norm name)`` pairs to merge in a DenseNet: conv0/norm0 and conv1/norm2.

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


def post_concat_norms(model: nn.Module) -> list[str]:
    """Names of the batch norms that follow a concatenation (kept, with the identity relevance rule)."""
    merged = {bn for _, bn in densenet_merge_pairs(model)}
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and name not in merged]


class _ExactNamedMergeBatchNorm(NamedMergeBatchNorm):
    """``NamedMergeBatchNorm`` that also zeroes ``eps`` while merged, so outputs stay exactly equal."""

    def register(self, linears, batch_norm) -> None:  # noqa: ANN001 (zennit's signature)
        self.batch_norm_eps = batch_norm.eps
        super().register(linears, batch_norm)
        batch_norm.eps = 0.0

    def remove(self) -> None:
        super().remove()
        self.batch_norm.eps = self.batch_norm_eps


class DenseNetCanonizer(Canonizer):
    """zennit canonizer for torchvision DenseNets (and :class:`~cxrtool.models.densenet.DenseNetClassifier`).

    Merges ``norm0`` into ``conv0`` and each dense layer's ``norm2`` into its ``conv1``; the batch
    norms after concatenations stay and get the ``Pass`` rule from the composite (see the module
    docstring for why).  Use it like any zennit canonizer: ``Composite(canonizers=[DenseNetCanonizer()])``.
    ``remove()`` restores every parameter and ``eps``.
    """

    def apply(self, root_module: nn.Module) -> list[Canonizer]:
        """Merge the batch norms of ``root_module`` in place; return the handles that undo it."""
        return _ExactNamedMergeBatchNorm(densenet_merge_pairs(root_module)).apply(root_module)

    def register(self) -> None:
        """Nothing to do: the per-pair merges returned by :meth:`apply` hold the state."""

    def remove(self) -> None:
        """Nothing to do: the per-pair merges returned by :meth:`apply` are removed individually."""
