"""Fast LRP rules: modules whose backward pass *is* the relevance rule.

zennit implements a rule as hooks that, during the backward pass, re-run the layer's forward with
modified parameters (copied on every call) for every input modifier, then call
``autograd.grad``.  Here each rule is a module wrapping a custom ``autograd.Function``: the forward
is the layer's ordinary forward, the backward receives the upper relevance and returns the lower
relevance directly.  Modified weights (``W+``, ``W-``, gamma weights) are computed once when the
rule is built, stacked rules (gamma, alpha-beta) share one convolution with the weights
concatenated along the output channels, and the whole batch goes through one backward call.

Every rule matches the zennit rule of the same name (``zennit.rules``) up to float rounding; the
tests compare them on a DenseNet.  A convolution built with ``charge_bias=False`` (its bias is a
merged batch-norm shift) leaves the bias out of the rule, like zennit's ``zero_params=['bias']``;
a bias that is charged (the classifier's, and every bias under :class:`Gamma`) has its relevance
added to the net's :class:`BiasLedger`, so ``cxrtool explain`` can report what the rules left out next to what
reached the pixels.  Conv rules other than the first layer's assume non-negative
inputs, which holds in DenseNet because every such convolution (and the classifier) follows a
ReLU; zennit's versions add terms for negative inputs that are zero there.

References: Bach et al. 2015 (LRP, epsilon, alpha-beta); Montavon et al. 2017 (deep Taylor,
z+ and z^B/ZBox); Montavon et al. 2019 (gamma, layer-wise relevance propagation: an overview);
Lapuschkin et al. 2019 (flat).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.densenet import _DenseLayer

#: zennit's default epsilon / stabiliser
STABILIZER = 1e-6


def stabilize(z: torch.Tensor, eps: float = STABILIZER) -> torch.Tensor:
    """zennit's stabiliser: move ``z`` away from zero by ``eps`` in the direction of its sign (+ for 0)."""
    return z + eps * ((z == 0).to(z) + z.sign())


class _RelevanceFn(torch.autograd.Function):
    """Forward: ``rule.plain(x)``; backward: ``rule.relevance(x, R)`` (relevance, not gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, rule: Rule) -> torch.Tensor:  # type: ignore[override]
        ctx.rule = rule
        if rule.needs_input:  # Pass does not: DenseNet's concatenations are not kept alive for it
            ctx.save_for_backward(x)
        return rule.plain(x)

    @staticmethod
    def backward(ctx, relevance: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        x = ctx.saved_tensors[0] if ctx.rule.needs_input else None
        return ctx.rule.relevance(x, relevance), None


class BiasLedger:
    """Per-sample relevance the rules hand to biases during one backward pass (what the heatmap leaves out)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None

    def reset(self) -> None:
        self.total = None

    def add(self, per_sample: torch.Tensor) -> None:
        self.total = per_sample if self.total is None else self.total + per_sample


class Rule(nn.Module):
    """Base class: a layer whose backward pass propagates relevance by a fixed rule."""

    needs_input = True
    ledger: BiasLedger | None = None  # set by compile_lrp; rules that charge a bias report to it

    def _charge(self, per_sample: torch.Tensor) -> None:
        if self.ledger is not None:
            self.ledger.add(per_sample.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad:
            return self.plain(x)
        return _RelevanceFn.apply(x, self)

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped layer's ordinary forward."""
        raise NotImplementedError

    def relevance(self, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
        """Lower-layer relevance from the input ``x`` and the upper relevance ``r_out``."""
        raise NotImplementedError


class Pass(Rule):
    """Identity relevance for an element-wise unit: a ReLU, or a batch norm kept after a concatenation.

    Unlike the ReLU's gradient this also passes relevance that reaches a zero activation (as zennit's
    ``Pass`` does); that happens after max pooling, whose zero outputs can still receive relevance
    from the ``Pass``-ed batch norms of the dense layers.
    """

    needs_input = False

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def relevance(self, x: torch.Tensor | None, r_out: torch.Tensor) -> torch.Tensor:
        return r_out


class ConcatNormReLU(nn.Module):
    """DenseNet's ``relu(norm(cat(features)))`` written straight from the pieces, with ``Pass`` relevance.

    The forward writes each piece's normalised, rectified channels into one output buffer: no
    concatenated copy and no separate ReLU pass (a third of the LRP forward's memory traffic in
    the dense layers, bench/explain.py).  Like ``Pass`` on the norm and the ReLU, the relevance is
    the identity, handed back to each piece as its slice of the channels.
    """

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        scale = torch.rsqrt(norm.running_var + norm.eps)
        shift = -norm.running_mean * scale
        if norm.affine:
            scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
        self.register_buffer("scale", scale.detach().view(1, -1, 1, 1))
        self.register_buffer("shift", shift.detach().view(1, -1, 1, 1))

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if not any(f.requires_grad for f in features):
            return _concat_norm_relu(features, self.scale, self.shift)
        return _ConcatPassFn.apply(self.scale, self.shift, *features)


def _concat_norm_relu(features: list[torch.Tensor], scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    first = features[0]
    shape = (first.shape[0], sum(f.shape[1] for f in features), *first.shape[2:])
    out = torch.empty(shape, dtype=first.dtype, device=first.device, memory_format=_format_of(first))
    c = 0
    for f in features:
        n = f.shape[1]
        torch.addcmul(shift[:, c : c + n], f, scale[:, c : c + n], out=out[:, c : c + n])
        c += n
    return out.clamp_min_(0)


class ListInputDenseLayer(_DenseLayer):
    """torchvision's dense layer, except that ``norm1`` (a :class:`ConcatNormReLU`) gets the list of earlier
    features.
    """

    def bn_function(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.conv1(self.relu1(self.norm1(inputs)))


class _ConcatPassFn(torch.autograd.Function):
    """Forward: :func:`_concat_norm_relu`; backward: the upper relevance, split back to the pieces."""

    @staticmethod
    def forward(ctx, scale: torch.Tensor, shift: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.sizes = [f.shape[1] for f in features]
        return _concat_norm_relu(list(features), scale, shift)

    @staticmethod
    def backward(ctx, relevance: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        return (None, None, *relevance.split(ctx.sizes, 1))


class Norm(Rule):
    """zennit's ``Norm`` for average pooling: relevance shared in proportion to each input's share."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def relevance(self, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
        z = self.layer(x)
        grad = r_out / stabilize(z)
        layer = self.layer
        if isinstance(layer, nn.AdaptiveAvgPool2d) and layer.output_size in (1, (1, 1)):
            back = grad.expand_as(x) / (x.shape[-1] * x.shape[-2])
        elif isinstance(layer, nn.AvgPool2d):  # the pool's own backward, without building a graph
            back = torch.ops.aten.avg_pool2d_backward(
                grad,
                x,
                _pair(layer.kernel_size),
                _pair(layer.stride or layer.kernel_size),
                _pair(layer.padding),
                layer.ceil_mode,
                layer.count_include_pad,
                layer.divisor_override,
            )
        else:
            with torch.enable_grad():
                xg = x.detach().requires_grad_()
                (back,) = torch.autograd.grad(self.layer(xg), xg, grad)
        return back.mul(x)


def _pair(v: int | tuple[int, int]) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


class _ConvRule(Rule):
    """Shared plumbing for rules on ``nn.Conv2d``: frozen copies of weight, bias and geometry."""

    relu = False  # set by compile_lrp when a ReLU (identity relevance) follows and nothing else reads the output

    def __init__(self, conv: nn.Conv2d, charge_bias: bool = True):
        super().__init__()
        self.register_buffer("weight", conv.weight.detach().clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias)  # the forward always uses it
        self.register_buffer("rule_bias", bias if charge_bias else torch.zeros_like(bias))  # what the rule sees
        self.charges_bias = bool(self.rule_bias.any())
        self.geometry = {
            "stride": conv.stride,
            "padding": conv.padding,
            "dilation": conv.dilation,
            "groups": conv.groups,
        }
        self._counts: dict[tuple[int, ...], torch.Tensor] = {}  # receptive-field sizes per input shape (flat rule)

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.weight, self.bias, **self.geometry)
        return out.clamp_min_(0) if self.relu else out  # in place on the fresh output

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, **self.geometry)

    def _back(self, shape: torch.Size, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """``conv2d_input`` (the convolution's input gradient) as a transposed convolution.

        Same numbers; oneDNN runs ``conv_transpose2d`` up to 3x faster than the
        ``convolution_backward`` kernel ``conv2d_input`` calls for 1x1 convolutions on channels-last
        tensors (bench/explain.py)."""
        g = self.geometry
        stride, padding, dilation = (_pair(g[k]) for k in ("stride", "padding", "dilation"))
        extra = [
            shape[2 + d]
            - ((grad.shape[2 + d] - 1) * stride[d] - 2 * padding[d] + dilation[d] * (weight.shape[2 + d] - 1) + 1)
            for d in (0, 1)
        ]
        return F.conv_transpose2d(grad, weight, None, stride, padding, extra, g["groups"], dilation)

    def _flat(self, shape: torch.Size, r_out: torch.Tensor) -> torch.Tensor:
        """The flat rule: each output's relevance spread uniformly over its receptive field.

        All-ones weights give every input channel the same share, so (ungrouped) the output channels are summed
        first and one channel is spread (a 1 -> 1 box filter), then copied to the input channels.
        The receptive-field sizes are the same for every film of a size: computed once, for one sample.
        """
        key = tuple(shape[1:])
        if key not in self._counts:
            ones = torch.ones((1, *key), dtype=r_out.dtype)
            self._counts[key] = stabilize(self._conv(ones, torch.ones_like(self.weight)))
        if self.geometry["groups"] != 1:  # channels are not interchangeable across groups
            return self._back(shape, torch.ones_like(self.weight), r_out / self._counts[key])
        shares = (r_out / self._counts[key]).sum(1, keepdim=True)
        one = torch.ones((1, 1, *self.weight.shape[2:]), dtype=r_out.dtype)
        return (
            self._back((shape[0], 1, *shape[2:]), one, shares).expand(shape).contiguous(memory_format=_format_of(r_out))
        )


def _format_of(t: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        else torch.contiguous_format
    )


class ZPlus(_ConvRule):
    """z+ rule (alpha=1, beta=0) for non-negative inputs: ``R_i = x_i * sum_j w+_ij R_j / z+_j``.

    ``spread_dead``: relevance of units with ``z+ = 0`` goes flat to their receptive field
    instead of being dropped (zennit drops it).  Whatever is still not passed down (a charged
    bias's share, the stabiliser's) is booked to the ledger.
    """

    def __init__(self, conv: nn.Conv2d, charge_bias: bool = True, spread_dead: bool = True):
        super().__init__(conv, charge_bias)
        self.register_buffer("w_pos", self.weight.clamp(min=0))
        b_pos = self.rule_bias.clamp(min=0)
        self.charges_bias = bool(b_pos.any())
        # z >= 0 here (x >= 0, W+ >= 0, b+ >= 0), where zennit's stabiliser is exactly z + eps: the
        # convolution adds it with the bias, so no separate pass over z
        self.register_buffer("kept", b_pos + STABILIZER)
        self.spread_dead = spread_dead

    def relevance(self, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
        kept = self.kept
        z = self._conv(x, self.w_pos, kept)
        grad = r_out / z
        r_in = self._back(x.shape, self.w_pos, grad).mul_(x)  # in place on our own temporary
        # what is not passed down, per output unit, is r_out * (b+ + eps) / z, since
        # sum_i x_i w+_ij = z_j - b+_j - eps: booked per output channel, without another full-size tensor
        left = grad.sum((2, 3)) @ kept
        if self.spread_dead and bool(z.amin() <= 2 * STABILIZER):
            # units with z+ = 0 that still carry relevance: only a (merged) bias switched them on,
            # over inputs that are all zero (typically a black film border).  zennit's ZPlus drops
            # their relevance; we spread what they did not pass down uniformly over the unit's
            # receptive field (the flat rule), so it reaches the pixels that made those inputs zero
            dead = grad * kept.view(1, -1, 1, 1) * (z <= 2 * STABILIZER)
            r_in = r_in + self._flat(x.shape, dead)
            left = left - dead.sum((1, 2, 3))
        if self.ledger is not None:
            self._charge(left)  # the charged bias's share and the stabiliser's
        return r_in


class AlphaBeta(_ConvRule):
    """alpha-beta rule for non-negative inputs (one convolution with ``[W+; W-]`` stacked)."""

    def __init__(self, conv: nn.Conv2d, alpha: float = 2.0, beta: float = 1.0, charge_bias: bool = True):
        super().__init__(conv, charge_bias)
        if alpha - beta != 1.0 or beta < 0:
            raise ValueError("alpha - beta must be 1 and beta >= 0")
        self.alpha, self.beta = alpha, beta
        self.register_buffer("w_cat", torch.cat([self.weight.clamp(min=0), self.weight.clamp(max=0)]))
        self.register_buffer("b_cat", torch.cat([self.rule_bias.clamp(min=0), self.rule_bias.clamp(max=0)]))

    def relevance(self, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
        z_pos, z_neg = self._conv(x, self.w_cat, self.b_cat).chunk(2, dim=1)
        grad = torch.cat([self.alpha * r_out / stabilize(z_pos), -self.beta * r_out / stabilize(z_neg)], dim=1)
        return x * self._back(x.shape, self.w_cat, grad)


class Gamma(_ConvRule):
    """Generalised gamma rule for non-negative inputs (one convolution with both gamma weights stacked).

    Always charges the layer's bias, merged batch-norm shifts included, and books its share: the
    branch is picked by the sign of the real output ``z = Wx + b`` (as zennit's ``Gamma`` does), and
    only a denominator ``z + gamma * z+`` built from that same ``z`` keeps that sign and stays away
    from zero.  Leaving the bias out (``zero_params=['bias']``) gives denominators near zero where
    ``b`` decides the sign, and relevance explodes on trained models.
    """

    def __init__(self, conv: nn.Conv2d, gamma: float = 0.25):
        super().__init__(conv)
        self.gamma = gamma
        w, b = self.weight, self.bias
        self.register_buffer("w_cat", torch.cat([w + gamma * w.clamp(min=0), w + gamma * w.clamp(max=0)]))
        self.register_buffer("b_cat", torch.cat([b + gamma * b.clamp(min=0), b + gamma * b.clamp(max=0)]))

    def relevance(self, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
        z_up, z_down = self._conv(x, self.w_cat, self.b_cat).chunk(2, dim=1)
        z = (z_up + z_down) / (2.0 + self.gamma)  # = W x + b, without another convolution
        grad = torch.cat([r_out * (z > 0) / stabilize(z_up), r_out * (z < 0) / stabilize(z_down)], dim=1)
        r_in = x * self._back(x.shape, self.w_cat, grad)
        if self.ledger is not None:  # the bias's share, the stabiliser's and that of outputs exactly 0
            self._charge(r_out.sum((1, 2, 3)) - r_in.sum((1, 2, 3)))
        return r_in


class Epsilon(_ConvRule):
    """epsilon rule on a convolution (``epsilon`` ~ 0 gives LRP-0)."""

    def __init__(self, conv: nn.Conv2d, epsilon: float = STABILIZER, charge_bias: bool = True):
        super().__init__(conv, charge_bias)
        self.epsilon = epsilon

    def relevance(self, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
        z = self._conv(x, self.weight, self.rule_bias)
        grad = r_out / stabilize(z, self.epsilon)
        if self.charges_bias:
            self._charge(grad.sum((2, 3)) @ self.rule_bias)
        return x * self._back(x.shape, self.weight, grad)


class Flat(_ConvRule):
    """Flat rule for the first layer: relevance spread uniformly over each output's receptive field."""

    def relevance(self, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
        return self._flat(x.shape, r_out)


class ZBox(_ConvRule):
    """z^B rule for the first layer: relevance relative to the box ``[low, high]`` of valid inputs."""

    def __init__(self, conv: nn.Conv2d, low: torch.Tensor, high: torch.Tensor, charge_bias: bool = True):
        super().__init__(conv, charge_bias)
        self.register_buffer("low", low.reshape(1, -1, 1, 1).to(self.weight))
        self.register_buffer("high", high.reshape(1, -1, 1, 1).to(self.weight))
        self.register_buffer("w_pos", self.weight.clamp(min=0))
        self.register_buffer("w_neg", self.weight.clamp(max=0))

    def relevance(self, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
        low, high = self.low.expand_as(x), self.high.expand_as(x)
        b = self.rule_bias  # cancels: b - b+ - b- = 0, so ZBox never charges a bias
        z = (
            self._conv(x, self.weight, b)
            - self._conv(low, self.w_pos, b.clamp(min=0))
            - self._conv(high, self.w_neg, b.clamp(max=0))
        )
        grad = r_out / stabilize(z)
        back = self._back
        return (
            x * back(x.shape, self.weight, grad)
            - low * back(x.shape, self.w_pos, grad)
            - high * back(x.shape, self.w_neg, grad)
        )


class EpsilonLinear(Rule):
    """epsilon rule on ``nn.Linear`` (the classifier)."""

    def __init__(self, linear: nn.Linear, epsilon: float = STABILIZER):
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().clone())
        bias = linear.bias.detach().clone() if linear.bias is not None else torch.zeros(linear.out_features)
        self.register_buffer("bias", bias)
        self.epsilon = epsilon

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def relevance(self, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
        grad = r_out / stabilize(self.plain(x), self.epsilon)
        if self.bias.any():
            self._charge(grad @ self.bias)
        return x * (grad @ self.weight)
