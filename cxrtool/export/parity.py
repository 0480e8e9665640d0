"""Is an export faithful?  The same films through a reference and a candidate, compared.

Used by every export step (ONNX, TensorRT, INT8): the check inputs are real films spread over
the given folders (so a class-per-folder tree contributes every class), preprocessed exactly like
inference, or seeded noise when no films are given.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.export.options import CHECK_COUNT
from cxrtool.inputs import iter_input_files
from cxrtool.preprocess import load_input


class ParityError(CxrError):
    """An export ran but its outputs differ from the reference beyond the tolerance (nothing was written)."""


@dataclass
class ParityReport:
    """Reference vs. candidate logits on the same inputs."""

    n_inputs: int
    inputs: str  # "real" (films) or "synthetic" (seeded normal noise)
    max_abs_diff: float
    top1_agreement: float
    tolerance: float
    skipped: list[str] = field(default_factory=list)  # "path: reason" for check files that failed to load

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def compare_logits(reference: np.ndarray, candidate: np.ndarray, *, tolerance: float, inputs: str) -> ParityReport:
    """Max abs difference and top-1 agreement between two (N, classes) logit arrays."""
    if reference.shape != candidate.shape:
        raise CxrError(f"parity check: output shapes differ ({reference.shape} vs {candidate.shape})")
    diff = float(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max()) if reference.size else 0.0
    agree = float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0
    return ParityReport(len(reference), inputs, diff, agree, tolerance)


def load_check_batch(
    sources: Iterable[str | Path], cfg: PreprocessCfg, *, limit: int = CHECK_COUNT
) -> tuple[np.ndarray, list[str]]:
    """Up to ``limit`` films spread evenly over ``sources`` (files/folders), preprocessed with ``cfg``.

    Evenly spaced rather than the first ``limit`` so a class-per-folder tree contributes every class.
    Files that fail to load are skipped and returned as ``"path: reason"``.
    """
    files = list(iter_input_files(sources))
    if limit <= 0:
        raise CxrError(f"need at least one check image, not {limit}")
    order = _spread(len(files), limit)
    batch: list[np.ndarray] = []
    skipped: list[str] = []
    for i in order:
        if len(batch) >= limit:
            break
        try:
            batch.append(load_input(files[i], cfg))
        except ImageLoadError as exc:
            skipped.append(str(exc))
    if not batch:
        where = ", ".join(str(s) for s in sources) or "(nothing given)"
        raise CxrError(f"no loadable image among the check inputs {where}")
    return np.stack(batch), skipped


def _spread(n: int, k: int) -> list[int]:
    """Indices 0..n-1, the k evenly spaced ones first, then the rest (replacements for bad files)."""
    if n <= k:
        return list(range(n))
    first = sorted({int(round(j * (n - 1) / (k - 1))) for j in range(k)}) if k > 1 else [0]
    chosen = set(first)
    return first + [i for i in range(n) if i not in chosen]


def synthetic_batch(cfg: PreprocessCfg, n: int = 4, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs, the fallback when no real films are given for the check."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, cfg.channels, cfg.input_size, cfg.input_size)).astype(np.float32)


def check_batch(cfg: PreprocessCfg, sources: Sequence[str | Path], limit: int) -> tuple[np.ndarray, str, list[str]]:
    """Real films from ``sources`` when given, else synthetic inputs: (batch, kind, skipped)."""
    if sources:
        batch, skipped = load_check_batch(sources, cfg, limit=limit)
        return batch, "real", skipped
    return synthetic_batch(cfg, min(limit, 4)), "synthetic", []
