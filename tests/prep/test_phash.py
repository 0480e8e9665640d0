"""Perceptual hash: robustness, separation, exhaustive pair search, and the covid3 known duplicates."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import numpy as np
import pytest

from cxrtool.images import pil_to_gray
from cxrtool.prep.phash import (
    DEFAULT_THRESHOLD,
    from_hex,
    group_pairs,
    hamming,
    near_duplicate_pairs,
    phash_array,
    phash_file,
    to_hex,
)


def test_resized_jpeg_copy_is_near_and_other_film_is_far(make_film, tmp_path: Path):
    a = make_film(1, 128)
    a.save(tmp_path / "a.png")
    a.resize((90, 77)).save(tmp_path / "a_small.jpg", quality=75)
    make_film(2, 128).save(tmp_path / "b.png")
    ha, hs, hb = (phash_file(tmp_path / n) for n in ("a.png", "a_small.jpg", "b.png"))
    assert ha.shape == (256,) and ha.dtype == bool
    assert hamming(ha, hs) <= DEFAULT_THRESHOLD
    assert hamming(ha, hb) > 3 * DEFAULT_THRESHOLD


def test_hex_roundtrip(make_film):
    h = phash_array(pil_to_gray(make_film(5)))
    assert len(to_hex(h)) == 64
    assert np.array_equal(from_hex(to_hex(h)), h)


def test_pair_search_matches_brute_force():
    rng = np.random.default_rng(0)
    base = rng.random((40, 256)) > 0.5
    hashes = base.copy()
    hashes[1] = base[0]
    hashes[1, :5] ^= True  # 5 bits from item 0
    hashes[7] = base[3]
    pairs = near_duplicate_pairs(hashes, threshold=6)
    brute = [
        (i, j, hamming(hashes[i], hashes[j]))
        for i, j in itertools.combinations(range(40), 2)
        if hamming(hashes[i], hashes[j]) <= 6
    ]
    assert sorted(pairs) == sorted(brute)
    assert (0, 1, 5) in pairs and (3, 7, 0) in pairs


def test_group_pairs_is_single_linkage():
    assert group_pairs(6, [(0, 2, 1), (2, 5, 3), (1, 4, 0)]) == [[0, 2, 5], [1, 4]]


@pytest.fixture(scope="module")
def covid3_hashes(shared_data: Path):
    rows = list(csv.DictReader(open(shared_data / "covid3" / "manifest.csv", newline="")))
    hashes = np.stack([phash_file(shared_data / r["file_256"]) for r in rows])
    return rows, hashes


def test_covid3_known_groups_found_exactly(covid3_hashes):
    """Every known near-duplicate pair (column dup_group) is found, and nothing else at the default threshold."""
    rows, hashes = covid3_hashes
    found = {(i, j) for i, j, _ in near_duplicate_pairs(hashes)}
    known = {
        (i, j)
        for i, j in itertools.combinations(range(len(rows)), 2)
        if rows[i]["dup_group"] and rows[i]["dup_group"] == rows[j]["dup_group"]
    }
    assert len(known) == 18
    recall = len(found & known) / len(known)
    precision = len(found & known) / len(found)
    assert (precision, recall) == (1.0, 1.0)
    groups = group_pairs(len(rows), [(i, j, 0) for i, j in found])
    assert sorted({rows[g[0]]["dup_group"] for g in groups}) == sorted({r["dup_group"] for r in rows if r["dup_group"]})


def test_covid3_hash_survives_resolution_change(covid3_hashes, shared_data: Path):
    """The 640-px originals hash within the threshold of their 256-px copies."""
    rows, hashes = covid3_hashes
    picked = [i for i, r in enumerate(rows) if r["dup_group"]][:8]
    for i in picked:
        assert hamming(phash_file(shared_data / rows[i]["file"]), hashes[i]) <= DEFAULT_THRESHOLD // 2
