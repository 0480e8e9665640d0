"""Data-side shortcut audit: probes see the fixtures' adult-vs-child split, and nothing in shuffled labels."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtool.trust.shortcut import (
    map_comparison,
    probe,
    shortcut_audit,
    summary_lines,
    thumbnail,
)

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def films(shared_data):
    from cxrtool.config import PreprocessCfg
    from cxrtool.preprocess import load_gray

    cfg = PreprocessCfg(input_size=64)
    grays, labels = [], []
    for cls in ("covid", "normal", "viral_pneumonia"):
        for f in sorted((shared_data / "covid3_256" / cls).glob("*.png"))[:30]:
            grays.append(load_gray(f, cfg))
            labels.append(cls)
    return np.stack([thumbnail(g) for g in grays]), np.array(labels)


def test_thumbnail_probe_sees_adult_vs_child(films):
    thumbs, labels = films
    adult = probe(thumbs, np.where(labels == "covid", "adult", "child"), "8x8 thumbnail", "age group")
    assert adult is not None and adult.accuracy >= 0.85 and adult.chance == 0.5  # no lung detail needed
    shuffled = probe(thumbs, np.random.default_rng(0).permutation(labels), "8x8 thumbnail", "shuffled")
    assert shuffled is not None and shuffled.accuracy < 0.55  # chance 0.33: the probe does not invent structure


def test_probe_needs_two_of_each_label():
    assert probe(np.zeros((3, 4)), ["a", "a", "b"], "x", "y") is None
    assert probe(np.zeros((3, 4)), ["a", "a", "a"], "x", "y") is None


def test_map_comparison_spread_and_correlation():
    focal = np.zeros((16, 16))  # 16 x 16: the normalised constant map (1/256) is exact, so its spread is exactly 0
    focal[7:9, 7:9] = 1.0
    wide = np.ones((16, 16))
    maps = [focal, focal * 2, wide, wide * 3]
    out = map_comparison(maps, ["a", "a", "b", "b"])
    assert out["spread"]["a"] == 4 / 256 and out["spread"]["b"] >= 0.79
    assert np.isnan(out["correlation"]["a|b"])  # b's mean map is constant: no correlation, not a made-up number
    corner = np.zeros((16, 16))
    corner[0:2, 0:2] = 1.0
    out = map_comparison([focal, focal * 2, focal, corner], ["a", "a", "b", "c"])
    assert out["correlation"]["a|b"] == pytest.approx(1.0)  # same normalised map, whatever the scale
    # two disjoint 4-pixel spots on 256 pixels: r = (256*0 - 4*4) / (256*4 - 4*4) = -1/63
    assert out["correlation"]["a|c"] == pytest.approx(-1 / 63)


def test_audit_lines_cover_pairs_folders_and_maps(films):
    thumbs, labels = films
    feats = np.random.default_rng(1).normal(size=(len(labels), 5))
    audit = shortcut_audit(thumbs, feats, list(labels), list(labels), [np.ones((4, 4))] * len(labels), list(labels))
    text = "\n".join(summary_lines(audit))
    assert "predicted covid vs normal" in text and "8x8 thumbnail -> input folder" in text
    within = [p for p in audit["probes"] if "within" in p.target]
    assert within == []  # each predicted class came from one folder: nothing to separate
    random_features = [p for p in audit["probes"] if p.inputs == "penultimate features"]
    assert random_features and random_features[0].accuracy < 0.6  # noise features do not separate folders
