"""Composites: which rule goes on which layer, by name (the values ``--composite`` accepts).

A composite is data (a :class:`CompositeSpec`), like zennit's layer maps: a rule for the first
convolution, one for every other convolution and one for the classifier; batch norms after
concatenations get ``Pass`` (see :mod:`.canonizers`), average pooling ``Norm``, ReLU and max
pooling pass relevance through.  Two builders turn a spec into something that runs:
:func:`compile_lrp` (the fast rules of :mod:`.rules`, used by ``cxrtool explain``) and
:func:`zennit_composite` (stock zennit rules plus our canonizer: the reference the fast path is
tested against, and the "naive" baseline of ``bench/explain.py``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cxrtool.explain.rule_specs import (
    AlphaBetaRule,
    Bounds,
    EpsilonRule,
    FlatRule,
    GammaRule,
    RuleSpec,
    ZBoxRule,
    ZPlusRule,
)

if TYPE_CHECKING:  # the registry stays torch-free so ``cxrtool --help`` can list the names fast
    import torch.nn as nn

__all__ = [
    "COMPOSITES",
    "DEFAULT_COMPOSITE",
    "Bounds",
    "CompositeSpec",
    "compile_lrp",
    "get_composite",
    "zennit_composite",
]


@dataclass(frozen=True)
class CompositeSpec:
    """A named LRP composite: a rule for the first convolution, one for every other, one for the classifier.

    ``first=None`` uses the ``conv`` rule for the first layer too; ``conv=None`` means no LRP at
    all: plain gradient x input.
    """

    name: str
    first: RuleSpec | None
    conv: RuleSpec | None
    description: str
    classifier: RuleSpec = field(default_factory=EpsilonRule)

    @property
    def is_lrp(self) -> bool:
        return self.conv is not None


COMPOSITES: dict[str, CompositeSpec] = {}


def register_composite(spec: CompositeSpec) -> CompositeSpec:
    COMPOSITES[spec.name] = spec
    return spec


register_composite(
    CompositeSpec(
        "epsilon_plus_flat", FlatRule(), ZPlusRule(), "flat first layer, z+ convolutions, epsilon classifier (default)"
    )
)
register_composite(
    CompositeSpec(
        "epsilon_gamma_box",
        ZBoxRule(),
        GammaRule(gamma=0.25),
        "ZBox first layer (bounds from the preprocessing), gamma=0.25 convolutions, epsilon classifier",
    )
)
register_composite(
    CompositeSpec(
        "epsilon_alpha2_beta1_flat",
        FlatRule(),
        AlphaBetaRule(alpha=2.0, beta=1.0),
        "flat first layer, alpha2-beta1 convolutions, epsilon classifier",
    )
)
register_composite(CompositeSpec("gradient", None, None, "gradient x input (baseline, not LRP)"))

DEFAULT_COMPOSITE = "epsilon_plus_flat"


def get_composite(name: str) -> CompositeSpec:
    """Look up a composite by name (``ValueError`` listing the valid names otherwise)."""
    try:
        return COMPOSITES[name]
    except KeyError:
        raise ValueError(f"unknown composite {name!r}; choose from {', '.join(COMPOSITES)}") from None


def _is_densenet(model: nn.Module) -> bool:
    names = dict(model.named_modules())
    return "features.conv0" in names and "features.norm0" in names


def compile_lrp(model: nn.Module, spec: CompositeSpec, bounds: Bounds | None = None) -> nn.Module:
    """A canonized deep copy of ``model`` whose backward pass propagates relevance by ``spec``.

    The original is never touched (zennit #237).  Batch norms are merged once here, not on every
    call; the biases those merges create are left out of every rule (``zero_params=['bias']``),
    other biases (the classifier's) are charged and booked in the copy's ``bias_ledger``
    (:class:`~cxrtool.explain.rules.BiasLedger`).  Models other than DenseNets are accepted only
    without batch norms (nothing would canonize them).
    """
    import torch.nn as nn

    from cxrtool.explain import rules
    from cxrtool.explain.canonizers import (
        DenseNetCanonizer,
        densenet_merge_pairs,
        merged_convs,
    )

    if not spec.is_lrp:
        raise ValueError(f"composite {spec.name!r} is not an LRP composite")
    lrp = copy.deepcopy(model).eval()
    for p in lrp.parameters():
        p.requires_grad_(False)
    merged: set[str] = set()
    shift_biases: set[str] = set()
    if _is_densenet(lrp):
        merged = {bn for _, bn in densenet_merge_pairs(lrp)}
        shift_biases = merged_convs(lrp)
        DenseNetCanonizer().apply(lrp)  # permanent on the copy
    first_conv = next((n for n, m in lrp.named_modules() if isinstance(m, nn.Conv2d)), None)
    dense_inputs = _list_input_dense_layers(lrp) if merged else set()
    fused = _norm_relu_pairs(lrp, merged) if merged else {}
    conv_relus = _conv_relu_pairs(lrp) if merged else {}
    fused_relus = set(fused.values()) | set(conv_relus.values())
    ledger = rules.BiasLedger()
    for name, module in list(lrp.named_modules()):
        new: nn.Module | None = None
        if name in fused_relus:
            new = nn.Identity()  # runs inside the batch norm's Pass, below
        elif isinstance(module, nn.Conv2d):
            rule = spec.first if name == first_conv and spec.first else spec.conv
            new = rule.fast(module, charge_bias=name not in shift_biases, bounds=bounds)
            new.relu = name in conv_relus  # the ReLU after it runs inside it, in place
        elif isinstance(module, nn.Linear):
            new = spec.classifier.fast(module, charge_bias=True, bounds=bounds)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if not merged:
                raise TypeError(f"cannot canonize batch norm {name!r} of a non-DenseNet model")
            if name in merged:
                new = nn.Identity()
            elif name in dense_inputs:  # cat, norm and ReLU in one pass, Pass relevance
                new = rules.ConcatNormReLU(module)
            elif name in fused:  # both are Pass: one step, the ReLU in place on the norm's fresh output
                new = rules.Pass(nn.Sequential(module, nn.ReLU(inplace=True)))
            else:
                new = rules.Pass(module)
        elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            new = rules.Norm(module)
        elif isinstance(module, nn.ReLU):
            new = rules.Pass(nn.ReLU(inplace=False))
        if new is not None:
            if isinstance(new, rules.Rule):
                new.ledger = ledger
            _set_submodule(lrp, name, new)
    lrp.bias_ledger = ledger
    return lrp


def _norm_relu_pairs(model: nn.Module, merged: set[str]) -> dict[str, str]:
    """``{batch norm: the ReLU applied to its output and nothing else}`` for DenseNet's kept norms.

    ``norm1 -> relu1`` in dense layers, ``norm -> relu`` in transitions, ``features.norm5`` -> the
    classifier's ``relu``.  Fusing each pair into one :class:`~cxrtool.explain.rules.Pass` lets the
    ReLU run in place; an out-of-place ReLU per layer was a fifth of the LRP forward (profiled).
    """
    import torch.nn as nn

    names = dict(model.named_modules())
    pairs = {}
    for name, module in names.items():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or name in merged:
            continue
        relu = _relu_after(name)
        if isinstance(names.get(relu), nn.ReLU):
            pairs[name] = relu
    return pairs


def _relu_after(norm: str) -> str:
    """The name of the ReLU torchvision's DenseNet applies to batch norm ``norm``'s output.

    ``normK -> reluK`` beside it (dense layers, transitions, ``features.norm0``), except
    ``features.norm5``, whose ReLU is the classifier's top-level ``relu``.
    """
    if norm == "features.norm5":
        return "relu"
    parent, _, leaf = norm.rpartition(".")
    return f"{parent}.{leaf.replace('norm', 'relu')}"


def _list_input_dense_layers(model: nn.Module) -> set[str]:
    """Switch every torchvision dense layer of ``model`` to :class:`~cxrtool.explain.rules.ListInputDenseLayer`.

    Returns their ``norm1`` names: the caller gives each :class:`~cxrtool.explain.rules.ConcatNormReLU`,
    which takes the list of earlier features itself.
    """
    from torchvision.models.densenet import _DenseLayer

    from cxrtool.explain.rules import ListInputDenseLayer

    norms = set()
    for name, module in model.named_modules():
        if type(module) is _DenseLayer:
            module.__class__ = ListInputDenseLayer  # same state, one method differs (on the LRP copy only)
            norms.add(f"{name}.norm1")
    return norms


def _conv_relu_pairs(model: nn.Module) -> dict[str, str]:
    """``{convolution: the ReLU applied to its output and nothing else}``, once its batch norm is merged.

    ``features.conv0 -> relu0`` and every dense layer's ``conv1 -> relu2`` (``norm0``/``norm2`` are
    merged into those convolutions).  The ReLU's rule is the identity, so running it inside the
    convolution's rule, in place, changes no relevance and saves a pass over the output.
    """
    import torch.nn as nn

    from cxrtool.explain.canonizers import densenet_merge_pairs

    names = dict(model.named_modules())
    pairs = {}
    for (conv,), norm in densenet_merge_pairs(model):
        relu = _relu_after(norm)
        if isinstance(names.get(relu), nn.ReLU):
            pairs[conv] = relu
    return pairs


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def zennit_composite(model: nn.Module, spec: CompositeSpec, bounds: Bounds | None = None):  # noqa: ANN201
    """The same composite built from stock zennit rules (plus :class:`DenseNetCanonizer` for DenseNets).

    Use it on a deep copy, inside ``with composite.context(copy):``.
    """
    import torch.nn as nn
    from zennit import composites as zc
    from zennit.types import Convolution

    from cxrtool.explain.canonizers import DenseNetCanonizer

    if not spec.is_lrp:
        raise ValueError(f"composite {spec.name!r} is not an LRP composite")

    densenet = _is_densenet(model)
    zero = {"zero_params": ["bias"]} if densenet else {}  # DenseNet conv biases are merged BN shifts

    conv = spec.conv.reference(zero=zero, bounds=bounds)
    classifier = spec.classifier.reference(zero={}, bounds=bounds)
    layer_map = zc.layer_map_base() + [(Convolution, conv), (nn.Linear, classifier)]
    first_map = [(Convolution, spec.first.reference(zero=zero, bounds=bounds))] if spec.first else []
    canonizers = [DenseNetCanonizer()] if densenet else []
    return zc.SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first_map, canonizers=canonizers)
