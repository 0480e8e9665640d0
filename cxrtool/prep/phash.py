"""Perceptual hashing (DCT pHash) and near-duplicate grouping.

Public COVID-19 collections re-post the same film under several names, crops and sizes; a
duplicate on both sides of a split inflates test scores. A DCT hash keeps only the low
frequencies of a small thumbnail, so resizing, re-encoding and small crops barely change it,
while different films differ in about half of the bits.

Defaults were chosen on ``covid3_256`` (11 known near-duplicate groups, 18 known pairs): with
256-bit hashes every known pair is within 12 bits, the closest pair of *different* films is 22
bits apart (a same-patient follow-up) and everything else is 58 bits or more apart, so 16 sits
in the gap (precision = recall = 1 on that list, see docs/prep_datasets.md).

References
----------
Zauner, "Implementation and Benchmarking of Perceptual Image Hash Functions", 2010 (the DCT
pHash of pHash.org; ``imagehash.phash`` computes the same quantity).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from cxrtool.images import load_image
from cxrtool.prep.options import DEFAULT_THRESHOLD
from cxrtool.prep.splits import connected_units

HASH_SIZE = 16  # 16x16 low-frequency DCT coefficients -> 256-bit hash
HIGHFREQ_FACTOR = 4  # thumbnail side = HASH_SIZE * HIGHFREQ_FACTOR


@lru_cache(maxsize=8)
def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix (numpy only: scipy is not a dependency)."""
    k = np.arange(n)
    mat = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))
    mat[0] /= np.sqrt(2.0)
    return mat


def phash_array(gray: np.ndarray, *, hash_size: int = HASH_SIZE) -> np.ndarray:
    """Boolean hash (``hash_size**2`` bits) of a grey image in [0, 1].

    The image is box-downsampled to a ``4*hash_size`` square (aspect is ignored on purpose: the
    covid datasets contain stretched re-posts), transformed with a 2-D DCT, and each of the
    ``hash_size x hash_size`` lowest-frequency coefficients becomes 1 when above their median.
    """
    side = hash_size * HIGHFREQ_FACTOR
    thumb = Image.fromarray(np.asarray(gray, dtype=np.float32), mode="F").resize((side, side), Image.Resampling.BOX)
    c = _dct_matrix(side)
    coeffs = (c @ np.asarray(thumb, dtype=np.float64) @ c.T)[:hash_size, :hash_size].ravel()
    return coeffs > np.median(coeffs)


def phash_file(path: str | Path, *, hash_size: int = HASH_SIZE) -> np.ndarray:
    """Hash of any file :func:`cxrtool.images.load_image` reads (raises ``ImageLoadError``)."""
    return phash_array(load_image(path), hash_size=hash_size)


def to_hex(bits: np.ndarray) -> str:
    return np.packbits(bits).tobytes().hex()


def from_hex(text: str) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8)).astype(bool)


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.count_nonzero(a != b))


_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint16)


def near_duplicate_pairs(hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD) -> list[tuple[int, int, int]]:
    """All pairs ``(i, j, distance)`` with ``i < j`` and Hamming distance <= ``threshold``.

    Exhaustive (no LSH) but blockwise on packed bytes with a popcount table, so tens of
    thousands of images stay within seconds and bounded memory (~64 MB per block).
    """
    n = len(hashes)
    if n < 2:
        return []
    packed = np.packbits(np.asarray(hashes, dtype=bool), axis=1)
    block = max(1, (64 << 20) // (n * packed.shape[1] * 2))
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, n, block):
        chunk = packed[start : start + block]
        dist = _POPCOUNT[chunk[:, None, :] ^ packed[None, :, :]].sum(axis=2)
        ii, jj = np.nonzero(dist <= threshold)
        keep = jj > ii + start
        pairs.extend((int(i) + start, int(j), int(dist[i, j])) for i, j in zip(ii[keep], jj[keep]))
    return pairs


def group_pairs(n: int, pairs: Sequence[tuple[int, int, int]]) -> list[list[int]]:
    """Connected components (single linkage) of size >= 2, each sorted, ordered by first member."""
    keys: list[list[str]] = [[] for _ in range(n)]
    for k, (i, j, _) in enumerate(pairs):
        keys[i].append(str(k))
        keys[j].append(str(k))
    members: dict[int, list[int]] = {}
    for idx, unit in enumerate(connected_units(keys)):
        members.setdefault(unit, []).append(idx)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
