"""DenseNetCanonizer: same outputs, fully reversible, every batch norm accounted for."""

from __future__ import annotations

import torch
import torch.nn as nn

from cxrtool.explain.canonizers import DenseNetCanonizer, densenet_merge_pairs, post_concat_norms, transitions
from cxrtool.models.checkpoint import load_checkpoint


def test_every_batch_norm_is_merged_or_kept(tiny_densenet):
    pairs = densenet_merge_pairs(tiny_densenet)
    assert pairs[0] == (("features.conv0",), "features.norm0")
    assert (("features.denseblock2.denselayer3.conv1",), "features.denseblock2.denselayer3.norm2") in pairs
    assert len(pairs) == 1 + 2 + 3  # conv0 + one per dense layer
    kept = post_concat_norms(tiny_densenet)
    assert "features.norm5" in kept and "features.transition1.norm" in kept
    assert "features.denseblock1.denselayer1.norm1" in kept
    assert not any(name.endswith(("norm0", "norm2")) for name in kept)
    all_norms = {n for n, m in tiny_densenet.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert all_norms == set(kept) | {bn for _, bn in pairs}
    assert transitions(tiny_densenet) == ["features.transition1"]


def _snapshot(model: nn.Module) -> tuple[dict, list, list, list]:
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)],
        [list(m._modules) for m in model.modules()],
        [type(m) for m in model.modules()],
    )


def _assert_restored(model: nn.Module, snap: tuple[dict, list, list, list]) -> None:
    state, eps, order, types = snap
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert [m.eps for m in model.modules() if isinstance(m, nn.BatchNorm2d)] == eps
    assert [list(m._modules) for m in model.modules()] == order
    assert [type(m) for m in model.modules()] == types
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules())


def test_canonized_output_unchanged_and_reverted(tiny_densenet):
    x = torch.randn(3, 3, 40, 40)
    snap = _snapshot(tiny_densenet)
    with torch.no_grad():
        ref = tiny_densenet(x)
        handles = DenseNetCanonizer().apply(tiny_densenet)
        merged_bn = tiny_densenet.features.norm0
        assert merged_bn.eps == 0 and torch.all(merged_bn.weight == 1)  # really merged
        assert tiny_densenet.features.conv0.bias is not None
        assert list(tiny_densenet.features.transition1._modules) == ["norm", "relu", "pool", "conv"]  # pool first
        out = tiny_densenet(x)
        for h in handles:
            h.remove()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    _assert_restored(tiny_densenet, snap)


def test_canonized_trained_densenet121_unchanged(trained_checkpoint, held_out_films):
    model, _ = load_checkpoint(trained_checkpoint)
    model.eval()
    x = held_out_films[1][:16]
    snap = _snapshot(model)
    with torch.no_grad():
        ref = model(x)
        handles = DenseNetCanonizer().apply(model)
        out = model(x)
        for h in handles:
            h.remove()
        again = model(x)
    assert (out - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item())
    assert torch.equal(again, ref)
    _assert_restored(model, snap)
