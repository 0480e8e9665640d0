"""Fast LRP rules: equal to zennit, LRP-0 = gradient x input, conservation, no side effects."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cxrtool.config import PreprocessCfg
from cxrtool.explain.attribution import Explainer, zennit_relevance
from cxrtool.explain.composites import COMPOSITES, CompositeSpec, compile_lrp

LRP = [name for name, spec in COMPOSITES.items() if spec.is_lrp]
BOUNDS = PreprocessCfg().input_bounds()


@pytest.mark.parametrize("name", LRP)
def test_fast_rules_equal_zennit(tiny_densenet, name):
    x = torch.randn(4, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    logits, (rel,) = Explainer(tiny_densenet, name, BOUNDS).explain(x)
    with torch.no_grad():
        torch.testing.assert_close(logits, tiny_densenet(x), rtol=1e-5, atol=1e-5)
    ref = zennit_relevance(tiny_densenet, x, logits.argmax(1), name, BOUNDS)
    assert rel.abs().sum() > 0
    torch.testing.assert_close(rel, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def _bias_free_relu_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4, bias=False),
    ).eval()


def test_lrp0_equals_gradient_times_input():
    net = _bias_free_relu_net()
    x = torch.randn(5, 3, 16, 16)
    lrp0 = CompositeSpec("lrp0", first=None, conv="epsilon", description="LRP-0", epsilon=1e-12)
    targets = torch.tensor([0, 1, 2, 3, 0])
    _, (rel,) = Explainer(net, lrp0).explain(x, [targets])
    logits, (gxi,) = Explainer(net, "gradient").explain(x, [targets])
    # LRP is seeded with the logit R = f, gradient x input with 1: at the classifier LRP-0 turns
    # f into a * w / f * f = a * w, the same as the gradient path, so no rescaling is needed
    torch.testing.assert_close(rel, gxi, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(zennit_relevance(net, x, targets, lrp0), rel, rtol=1e-4, atol=1e-6)
    # and both conserve exactly on a bias-free ReLU network (Euler: f(x) = x . grad f(x))
    torch.testing.assert_close(rel.sum((1, 2, 3)), logits[torch.arange(5), targets], rtol=1e-4, atol=1e-5)


def test_non_densenet_with_batch_norm_is_rejected():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(TypeError, match="batch norm"):
        compile_lrp(net, COMPOSITES["epsilon_plus_flat"])


@pytest.mark.parametrize("name", [*LRP, "gradient"])
def test_explaining_leaves_model_untouched(tiny_densenet, name):
    before = {k: v.clone() for k, v in tiny_densenet.state_dict().items()}
    x = torch.randn(2, 3, 40, 40)
    Explainer(tiny_densenet, name, BOUNDS).explain(x, [None, 1])
    if name != "gradient":
        zennit_relevance(tiny_densenet, x, torch.tensor([0, 2]), name, BOUNDS)
    after = tiny_densenet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in tiny_densenet.modules())
    assert all(p.requires_grad for p in tiny_densenet.parameters())


def test_several_targets_share_one_forward(tiny_densenet):
    x = torch.randn(3, 3, 40, 40)
    explainer = Explainer(tiny_densenet, "epsilon_plus_flat")
    _, many = explainer.explain(x, [0, 1, 2, None])
    for k in range(3):
        torch.testing.assert_close(many[k], explainer.explain(x, [k])[1][0])
    assert not torch.allclose(many[0], many[1])


# Conservation on trained weights: sum of input relevance / target logit.  Measured on the
# 4-step DenseNet-121: 0.96-0.98 for epsilon_plus_flat (the positive biases that merging norm2
# into conv1 creates absorb ~3% under z+, the classifier bias the rest); 1.15-1.20 for the gamma
# and alpha-beta composites, whose rules are not conservative when negative contributions win.
TOLERANCE = {"epsilon_plus_flat": 0.06, "epsilon_gamma_box": 0.3, "epsilon_alpha2_beta1_flat": 0.3}


@pytest.mark.parametrize("name", LRP)
def test_conservation_on_trained_densenet121(trained, name):
    model, cfg, x = trained
    logits, (rel,) = Explainer(model, name, cfg.input_bounds()).explain(x)
    target_logit = logits.max(1).values
    ratio = rel.sum((1, 2, 3)) / target_logit
    assert torch.all((ratio - 1).abs() < TOLERANCE[name]), ratio
