"""Fast LRP rules: equal to zennit, LRP-0 = gradient x input, no side effects, bias ledger."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from cxrtool.config import PreprocessCfg
from cxrtool.explain.attribution import Explainer, zennit_relevance
from cxrtool.explain.composites import COMPOSITES, CompositeSpec, compile_lrp
from cxrtool.explain.rule_specs import EpsilonRule, ZPlusRule

LRP = [name for name, spec in COMPOSITES.items() if spec.is_lrp]
BOUNDS = PreprocessCfg().input_bounds()


@pytest.mark.parametrize("name", LRP)
def test_fast_rules_equal_zennit(tiny_densenet, name):
    # zennit's ZPlus drops the relevance of units with z+ = 0; compare with that behaviour
    spec = COMPOSITES[name]
    if isinstance(spec.conv, ZPlusRule):
        spec = dataclasses.replace(spec, conv=ZPlusRule(spread_dead=False))
    x = torch.randn(4, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    logits, (rel,) = Explainer(tiny_densenet, spec, BOUNDS).explain(x)
    with torch.no_grad():
        torch.testing.assert_close(logits, tiny_densenet(x), rtol=1e-5, atol=1e-5)
    ref = zennit_relevance(tiny_densenet, x, logits.argmax(1), spec, BOUNDS)
    assert rel.abs().sum() > 0
    torch.testing.assert_close(rel, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def _bias_free_relu_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4, bias=False),
    ).eval()


def test_lrp0_equals_gradient_times_input():
    net = _bias_free_relu_net()
    x = torch.randn(5, 3, 16, 16)
    lrp0 = CompositeSpec(
        "lrp0", first=None, conv=EpsilonRule(1e-12), description="LRP-0", classifier=EpsilonRule(1e-12)
    )
    targets = torch.tensor([0, 1, 2, 3, 0])
    _, (rel,) = Explainer(net, lrp0).explain(x, [targets])
    logits, (gxi,) = Explainer(net, "gradient").explain(x, [targets])
    # LRP is seeded with the logit R = f, gradient x input with 1: at the classifier LRP-0 turns
    # f into a * w / f * f = a * w, the same as the gradient path, so no rescaling is needed
    torch.testing.assert_close(rel, gxi, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(zennit_relevance(net, x, targets, lrp0), rel, rtol=1e-4, atol=1e-6)
    # and both conserve exactly on a bias-free ReLU network (Euler: f(x) = x . grad f(x))
    torch.testing.assert_close(rel.sum((1, 2, 3)), logits[torch.arange(5), targets], rtol=1e-4, atol=1e-5)


def test_charged_biases_are_booked():
    """A network whose conv and classifier biases are charged: input relevance + ledger = logit."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.uniform_(0.1, 0.5)
    x = torch.rand(3, 3, 12, 12)
    result = Explainer(net, CompositeSpec("zp", first=None, conv=ZPlusRule(), description="z+")).attribute(x, [0])
    rel, booked = result.relevance[0].sum((1, 2, 3)), result.bias_share[0]
    assert torch.all(booked > 0.01 * result.logits[:, 0].abs())  # positive biases take a real share
    torch.testing.assert_close(rel + booked, result.logits[:, 0], rtol=1e-4, atol=1e-6)


def test_non_densenet_with_batch_norm_is_rejected():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    with pytest.raises(TypeError, match="batch norm"):
        compile_lrp(net, COMPOSITES["epsilon_plus_flat"])


@pytest.mark.parametrize("name", [*LRP, "gradient"])
def test_explaining_leaves_model_untouched(tiny_densenet, name):
    before = {k: v.clone() for k, v in tiny_densenet.state_dict().items()}
    order = [list(m._modules) for m in tiny_densenet.modules()]
    types = [type(m) for m in tiny_densenet.modules()]
    x = torch.randn(2, 3, 40, 40)
    Explainer(tiny_densenet, name, BOUNDS).explain(x, [None, 1])
    if name != "gradient":
        zennit_relevance(tiny_densenet, x, torch.tensor([0, 2]), name, BOUNDS)
    after = tiny_densenet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [list(m._modules) for m in tiny_densenet.modules()] == order
    assert [type(m) for m in tiny_densenet.modules()] == types
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in tiny_densenet.modules())
    assert all(p.requires_grad for p in tiny_densenet.parameters())


def test_several_targets_share_one_forward(tiny_densenet):
    x = torch.randn(3, 3, 40, 40)
    explainer = Explainer(tiny_densenet, "epsilon_plus_flat")
    many = explainer.attribute(x, [0, 1, 2, None])
    for k in range(3):
        one = explainer.attribute(x, [k])
        torch.testing.assert_close(many.relevance[k], one.relevance[0])
        torch.testing.assert_close(many.bias_share[k], one.bias_share[0])
    assert not torch.allclose(many.relevance[0], many.relevance[1])


@pytest.mark.parametrize("name", [*LRP, "gradient"])
def test_explainer_returns_the_models_logits_and_features(tiny_densenet, name):
    """The OOD score's features come off the explainer's own forward: the same numbers as ``forward_features``."""
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        logits, features = tiny_densenet.forward_features(x)
    result = Explainer(tiny_densenet, name, BOUNDS).attribute(x, [None])
    torch.testing.assert_close(result.logits, logits, rtol=1e-5, atol=1e-5)
    assert result.features is not None and result.features.shape == features.shape
    torch.testing.assert_close(result.features, features, rtol=1e-5, atol=1e-5)
