"""Dataset, augmentation and sampler: deterministic, resumable, sharded, flip-free by default."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cxrtool.config import PreprocessCfg
from cxrtool.data import AugmentCfg, EpochSampler, ManifestDataset, augment, balanced_weights
from cxrtool.errors import CxrError
from cxrtool.manifest import label_column, read_manifest, write_manifest
from cxrtool.task import Multiclass, Multilabel


def test_augment_is_a_function_of_the_generator(gradient_image: np.ndarray) -> None:
    cfg = AugmentCfg()
    a = augment(gradient_image, cfg, np.random.default_rng([0, 1, 2]))
    b = augment(gradient_image, cfg, np.random.default_rng([0, 1, 2]))
    c = augment(gradient_image, cfg, np.random.default_rng([0, 2, 2]))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1


def test_zero_ranges_are_identity_and_no_flip_by_default(gradient_image: np.ndarray) -> None:
    still = AugmentCfg(rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0)
    for seed in range(5):
        assert np.allclose(augment(gradient_image, still, np.random.default_rng(seed)), gradient_image, atol=1e-6)
    # the ramp rises left to right; with the default (no flip) it always still does
    for seed in range(10):
        out = augment(gradient_image, AugmentCfg(), np.random.default_rng(seed))
        assert out[20, 45:55].mean() > out[20, 5:15].mean() + 0.3
    flips = [
        augment(
            gradient_image,
            AugmentCfg(hflip=True, rotate_deg=0, scale=0, translate=0, brightness=0, contrast=0),
            np.random.default_rng(s),
        )[20, 58]
        < 0.2
        for s in range(20)
    ]
    assert 0 < sum(flips) < 20


def test_sampler_deterministic_resumable_and_sharded() -> None:
    s = EpochSampler(10, seed=3)
    s.set_epoch(1)
    full = list(s)
    assert sorted(full) == list(range(10)) and full == list(s)
    s.set_epoch(1, start=4)
    assert list(s) == full[4:] and len(s) == 6
    s.set_epoch(2)
    assert list(s) != full
    shards = [EpochSampler(10, seed=3, num_replicas=3, rank=r) for r in range(3)]
    for sh in shards:
        sh.set_epoch(1)
    parts = [list(sh) for sh in shards]
    assert all(len(p) == 4 for p in parts) and set().union(*parts) == set(range(10))


def test_balanced_sampler_evens_classes() -> None:
    targets = [0] * 90 + [1] * 10
    s = EpochSampler(100, seed=0, weights=balanced_weights(targets, 2))
    counts = Counter(targets[i] for e in range(20) for i in (s.set_epoch(e), list(s))[1])
    assert 0.4 < counts[1] / (counts[0] + counts[1]) < 0.6


def _png(path: Path, value: int) -> str:
    from PIL import Image

    Image.fromarray(np.full((20, 30), value, np.uint8)).save(path)
    return str(path)


def test_multilabel_targets_matched_by_column_name(tmp_path: Path) -> None:
    rows = [{"path": _png(tmp_path / "a.png", 10), "label": "B", label_column("B"): 1, label_column("A"): 0}]
    m = read_manifest(write_manifest(tmp_path / "m.csv", rows, [label_column("B"), label_column("A")]))
    cfg = PreprocessCfg.from_dict({"input_size": 16, "channels": 1})
    ds = ManifestDataset(m, class_names=["A", "B"], task=Multilabel(), preprocess=cfg)
    x, y, idx, err = ds[0]
    assert y.tolist() == [0.0, 1.0] and x.shape == (1, 16, 16) and (idx, err) == (0, "")
    with pytest.raises(CxrError, match="lacks columns for \\['C'\\]"):
        ManifestDataset(m, class_names=["A", "C"], task=Multilabel(), preprocess=cfg)


def test_unreadable_file_raises_or_becomes_an_error_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    rows = [{"path": str(bad), "label": "x"}, {"path": _png(tmp_path / "ok.png", 200), "label": "y"}]
    m = read_manifest(write_manifest(tmp_path / "m.csv", rows))
    cfg = PreprocessCfg(input_size=16)
    with pytest.raises(CxrError, match="bad.png"):
        ManifestDataset(m, class_names=["x", "y"], task=Multiclass(), preprocess=cfg)[0]
    ds = ManifestDataset(m, class_names=["x", "y"], task=Multiclass(), preprocess=cfg, skip_errors=True)
    assert ds[0][3] and ds[1][3] == "" and ds[1][1].item() == 1
