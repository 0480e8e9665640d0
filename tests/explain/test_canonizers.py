"""DenseNetCanonizer: same outputs, reversible, and the right batch norms merged."""

from __future__ import annotations

import torch

from cxrtool.explain.canonizers import DenseNetCanonizer, densenet_merge_pairs, post_concat_norms


def test_merge_pairs_and_post_concat_norms(tiny_densenet):
    pairs = densenet_merge_pairs(tiny_densenet)
    assert pairs[0] == (("features.conv0",), "features.norm0")
    assert (("features.denseblock2.denselayer3.conv1",), "features.denseblock2.denselayer3.norm2") in pairs
    assert len(pairs) == 1 + 2 + 3  # conv0 + one per dense layer
    kept = post_concat_norms(tiny_densenet)
    assert "features.norm5" in kept and "features.transition1.norm" in kept
    assert "features.denseblock1.denselayer1.norm1" in kept
    assert not any(name.endswith(("norm0", "norm2")) for name in kept)


def test_canonized_output_unchanged_and_reverted(tiny_densenet):
    x = torch.randn(3, 3, 40, 40)
    before = {k: v.clone() for k, v in tiny_densenet.state_dict().items()}
    eps_before = [m.eps for m in tiny_densenet.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        ref = tiny_densenet(x)
        handles = DenseNetCanonizer().apply(tiny_densenet)
        merged_bn = tiny_densenet.features.norm0
        assert merged_bn.eps == 0 and torch.all(merged_bn.weight == 1)  # really merged
        assert tiny_densenet.features.conv0.bias is not None
        out = tiny_densenet(x)
        for h in handles:
            h.remove()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    after = tiny_densenet.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.eps for m in tiny_densenet.modules() if isinstance(m, torch.nn.BatchNorm2d)] == eps_before


def test_canonized_densenet121_unchanged(trained):
    model, _, x = trained
    with torch.no_grad():
        ref = model(x)
        handles = DenseNetCanonizer().apply(model)
        out = model(x)
        for h in handles:
            h.remove()
        again = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert torch.equal(again, ref)
