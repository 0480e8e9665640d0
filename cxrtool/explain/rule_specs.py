"""LRP rules as parameter objects: what a composite puts on a layer, free of torch.

Each object holds its rule's parameters (zennit's rules are built the same way, e.g.
``Gamma(gamma=0.25)``) and builds the two things that run: :meth:`RuleSpec.fast`, the rule of
:mod:`.rules` used by ``cxrtool explain``, and :meth:`RuleSpec.reference`, the stock zennit rule the
fast one is tested against.  An ``epsilon`` of None means the rules' own stabiliser
(:data:`cxrtool.explain.rules.STABILIZER`, zennit's default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    import torch.nn as nn

    from cxrtool.explain import rules

#: (low, high) per input channel: the range the preprocessing maps [0, 1] pixels to
Bounds = tuple[Sequence[float], Sequence[float]]


def bounds_tensors(bounds: Bounds | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The input bounds as two 1-D tensors (``ValueError`` when a rule needs them and none were given)."""
    import torch

    if bounds is None:
        raise ValueError("this composite needs the input bounds (low, high) from the preprocessing config")
    low, high = (torch.tensor([float(v) for v in b]) for b in bounds)
    return low, high


def _eps(epsilon: float | None) -> dict[str, float]:
    return {} if epsilon is None else {"epsilon": epsilon}


@dataclass(frozen=True)
class RuleSpec:
    """One LRP rule with its parameters."""

    def fast(self, layer: nn.Module, *, charge_bias: bool, bounds: Bounds | None) -> rules.Rule:
        """The fast rule for ``layer``; ``charge_bias=False`` leaves a merged batch-norm shift out of it."""
        raise NotImplementedError

    def reference(self, *, zero: dict[str, Any], bounds: Bounds | None) -> Any:
        """The zennit rule it matches; ``zero`` is ``{"zero_params": ["bias"]}`` where biases are merged shifts."""
        raise NotImplementedError


@dataclass(frozen=True)
class ZPlusRule(RuleSpec):
    """z+ (deep Taylor); ``spread_dead``: relevance of units only a bias switched on goes flat, not lost."""

    spread_dead: bool = True

    def fast(self, layer, *, charge_bias, bounds):
        from cxrtool.explain import rules

        return rules.ZPlus(layer, charge_bias=charge_bias, spread_dead=self.spread_dead)

    def reference(self, *, zero, bounds):
        from zennit import rules as zr

        return zr.ZPlus(**zero)


@dataclass(frozen=True)
class GammaRule(RuleSpec):
    """Gamma; it charges every bias, merged shifts included: stable only with them (see :class:`.rules.Gamma`)."""

    gamma: float = 0.25

    def fast(self, layer, *, charge_bias, bounds):
        from cxrtool.explain import rules

        return rules.Gamma(layer, gamma=self.gamma)

    def reference(self, *, zero, bounds):
        from zennit import rules as zr

        return zr.Gamma(gamma=self.gamma)


@dataclass(frozen=True)
class AlphaBetaRule(RuleSpec):
    alpha: float = 2.0
    beta: float = 1.0

    def fast(self, layer, *, charge_bias, bounds):
        from cxrtool.explain import rules

        return rules.AlphaBeta(layer, alpha=self.alpha, beta=self.beta, charge_bias=charge_bias)

    def reference(self, *, zero, bounds):
        from zennit import rules as zr

        return zr.AlphaBeta(alpha=self.alpha, beta=self.beta, **zero)


@dataclass(frozen=True)
class EpsilonRule(RuleSpec):
    """Epsilon (LRP-0 as epsilon -> 0) on a convolution or the linear classifier."""

    epsilon: float | None = None

    def fast(self, layer, *, charge_bias, bounds):
        import torch.nn as nn

        from cxrtool.explain import rules

        if isinstance(layer, nn.Linear):
            return rules.EpsilonLinear(layer, **_eps(self.epsilon))
        return rules.Epsilon(layer, charge_bias=charge_bias, **_eps(self.epsilon))

    def reference(self, *, zero, bounds):
        from zennit import rules as zr

        return zr.Epsilon(**_eps(self.epsilon), **zero)


@dataclass(frozen=True)
class FlatRule(RuleSpec):
    def fast(self, layer, *, charge_bias, bounds):
        from cxrtool.explain import rules

        return rules.Flat(layer, charge_bias=charge_bias)

    def reference(self, *, zero, bounds):
        from zennit import rules as zr

        return zr.Flat(**zero)


@dataclass(frozen=True)
class ZBoxRule(RuleSpec):
    """z^B for the first layer, bounded by the preprocessing's input range (zennit's ``ZBox`` note)."""

    def fast(self, layer, *, charge_bias, bounds):
        from cxrtool.explain import rules

        return rules.ZBox(layer, *bounds_tensors(bounds), charge_bias=charge_bias)

    def reference(self, *, zero, bounds):
        from zennit import rules as zr

        low, high = bounds_tensors(bounds)
        return zr.ZBox(low=low.reshape(1, -1, 1, 1), high=high.reshape(1, -1, 1, 1), **zero)
