"""Conservation on a DenseNet-121 trained for real epochs (``trained_checkpoint``), on held-out real films.

What is conserved (docs/explain.md): input relevance + ``bias_share`` = the explained value (the target logit,
or its log-odds against the other classes), whatever
the logit's sign; under the DenseNet canonizer the only bias charged is the classifier's, so the
heatmap alone sums to the logit within a few per cent except where that bias is a large part of a
near-zero logit.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from cxrtool.explain.attribution import Explainer
from cxrtool.explain.composites import COMPOSITES
from cxrtool.explain.rule_specs import ZPlusRule
from cxrtool.models.checkpoint import load_checkpoint

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def model_and_bounds(trained_checkpoint):
    net, card = load_checkpoint(trained_checkpoint)
    return net, card.preprocess.input_bounds()


@pytest.fixture(scope="module")
def default_all_targets(model_and_bounds, held_out_films):
    net, bounds = model_and_bounds
    _, x = held_out_films
    return Explainer(net, "epsilon_plus_flat", bounds).attribute(x, [0, 1, 2])


def test_heatmap_sums_to_the_predicted_logit(default_all_targets):
    result = default_all_targets
    predicted = result.logits.argmax(1)
    rows = torch.arange(len(predicted))
    logit = result.logits[rows, predicted]
    total = torch.stack([r.sum((1, 2, 3)) for r in result.relevance], 1)[rows, predicted]
    ratio = total / logit
    assert torch.all((ratio - 1).abs() <= 0.05), ratio  # +-5% on every held-out film


def test_accounting_closes_for_every_target_sign(default_all_targets):
    """Every (film, class): relevance + bias share = logit, for positive, negative and near-zero logits."""
    result = default_all_targets
    logit = result.logits
    total = torch.stack([r.sum((1, 2, 3)) for r in result.relevance], 1)
    booked = torch.stack(result.bias_share, 1)
    assert (logit < 0).sum() > 20 and (logit.abs() < 0.5).sum() > 3  # the films really cover those cases
    err = (total + booked - logit).abs()
    assert torch.all(err <= 0.05 * logit.abs() + 1e-3), err.max()
    negative = logit < -0.5  # a negative logit gives a net-negative map, not an inverted one
    assert torch.all(total[negative] < 0)


def test_classifier_bias_moves_only_the_bias_share(model_and_bounds, held_out_films):
    """Shifting the target's bias (logit through zero and below) leaves the heatmap unchanged."""
    net, bounds = model_and_bounds
    _, x = held_out_films
    x = x[:8]
    base = Explainer(net, "epsilon_plus_flat", bounds).attribute(x, [0])

    shifted = copy.deepcopy(net)
    with torch.no_grad():
        zeroing = base.logits[:, 0].mean()
        shifted.classifier.bias[0] -= zeroing  # mean logit 0: some films positive, some negative, near zero
    moved = Explainer(shifted, "epsilon_plus_flat", bounds).attribute(x, [0])
    assert (moved.logits[:, 0] < 0).any() and (moved.logits[:, 0] > 0).any()
    # equal up to float32 rounding through the network (measured: 3e-5 x the map's largest value)
    torch.testing.assert_close(
        moved.relevance[0], base.relevance[0], rtol=1e-3, atol=1e-4 * base.relevance[0].abs().max().item()
    )
    torch.testing.assert_close(moved.bias_share[0], base.bias_share[0] - zeroing, rtol=1e-3, atol=1e-4)


def test_dead_units_are_spread_not_dropped(model_and_bounds, held_out_films):
    """Units only a merged bias switched on (black borders): zennit's z+ drops their relevance, ours spreads it."""
    net, bounds = model_and_bounds
    _, x = held_out_films
    spec = dataclasses.replace(COMPOSITES["epsilon_plus_flat"], conv=ZPlusRule(spread_dead=False))
    dropped = Explainer(net, spec, bounds).attribute(x)
    logit = dropped.logits.max(1).values
    ratio = dropped.relevance[0].sum((1, 2, 3)) / logit
    assert ratio.min() < 0.9  # without spreading some films lose >10%...
    torch.testing.assert_close(
        dropped.relevance[0].sum((1, 2, 3)) + dropped.bias_share[0], logit, rtol=1e-3, atol=1e-4
    )  # ...booked


@pytest.mark.parametrize("name", ["epsilon_gamma_box", "epsilon_alpha2_beta1_flat"])
def test_other_composites_roughly_conserve(model_and_bounds, held_out_films, name):
    """gamma and alpha-beta are not conservative rules (they create relevance when negative parts win)."""
    net, bounds = model_and_bounds
    _, x = held_out_films
    result = Explainer(net, name, bounds).attribute(x)
    logit = result.logits.max(1).values
    ratio = (result.relevance[0].sum((1, 2, 3)) + result.bias_share[0]) / logit
    assert torch.all((ratio - 1).abs() < 0.3), ratio


@pytest.fixture(scope="module")
def log_odds_all_targets(model_and_bounds, held_out_films):
    net, bounds = model_and_bounds
    _, x = held_out_films
    return Explainer(net, "epsilon_plus_flat", bounds, quantity="log-odds").attribute(x, [0, 1, 2])


def test_log_odds_accounting_closes(log_odds_all_targets):
    """Every (film, class): relevance + bias share = log(p / (1 - p)) of the softmax, the value the CSV reports."""
    result = log_odds_all_targets
    p = torch.softmax(result.logits.double(), 1)
    expected = torch.log(p / (1 - p)).float()  # independent of explained_quantity's logsumexp form
    value = torch.stack(result.explained, 1)
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-4)
    total = torch.stack([r.sum((1, 2, 3)) for r in result.relevance], 1)
    booked = torch.stack(result.bias_share, 1)
    assert (value < 0).sum() > 20 and (value > 0).sum() > 20
    err = (total + booked - value).abs()
    assert torch.all(err <= 0.05 * value.abs() + 1e-3), err.max()


def test_log_odds_shows_evidence_for_the_predicted_class_when_every_logit_is_negative(
    model_and_bounds, held_out_films, log_odds_all_targets
):
    """Lower every classifier weight by the same c: each film's logits all drop by c * sum(features) below zero,
    the softmax does not change.  The predicted class's logit map turns net-negative (all blue), its log-odds
    map stays the same map, net positive wherever the log-odds are clearly positive."""
    net, bounds = model_and_bounds
    _, x = held_out_films
    base = log_odds_all_targets
    pooled = base.features[:, -net.classifier.in_features :]  # the classifier's (non-negative) input
    c = float((base.logits.max(1).values.clamp(min=0) / pooled.sum(1)).max()) + 0.05
    lowered = copy.deepcopy(net)
    with torch.no_grad():
        lowered.classifier.weight -= c
    logit = Explainer(lowered, "epsilon_plus_flat", bounds).attribute(x, [None])
    odds = Explainer(lowered, "epsilon_plus_flat", bounds, quantity="log-odds").attribute(x, [None])
    assert torch.all(logit.logits < 0)
    assert torch.all(logit.relevance[0].sum((1, 2, 3)) < 0)  # the logit map is net evidence against, on every film
    predicted = base.logits.argmax(1)
    rows = torch.arange(len(predicted))
    torch.testing.assert_close(odds.explained[0], torch.stack(base.explained, 1)[rows, predicted], rtol=1e-4, atol=1e-4)
    reference = torch.stack(base.relevance, 1)[rows, predicted]
    torch.testing.assert_close(odds.relevance[0], reference, rtol=1e-3, atol=1e-4 * reference.abs().max().item())
    clear = odds.explained[0] > 0.5
    assert clear.sum() > 20 and torch.all(odds.relevance[0].sum((1, 2, 3))[clear] > 0)


def test_log_odds_seed_is_the_gradient_of_the_log_odds(tiny_densenet):
    """Gradient x input under ``log-odds`` is x times autograd's gradient of log p/(1-p): the seed's slope is right."""
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = Explainer(tiny_densenet, "gradient", quantity="log-odds").attribute(x, [None, 2])
    xr = x.clone().requires_grad_(True)
    p = torch.softmax(tiny_densenet(xr).double(), 1)
    for k, (target, rel) in enumerate(zip([p.detach().argmax(1), torch.full((4,), 2)], result.relevance)):
        q = p[torch.arange(4), target]
        (grad,) = torch.autograd.grad(torch.log(q / (1 - q)).sum(), xr, retain_graph=k == 0)
        torch.testing.assert_close(rel, (grad * x).float(), rtol=1e-3, atol=1e-6)
    with pytest.raises(ValueError, match="quantity"):
        Explainer(tiny_densenet, quantity="probability")
