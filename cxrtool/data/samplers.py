"""A deterministic, resumable, shardable sampler (uniform shuffle or class-balanced draws).

The order of an epoch depends only on ``(seed, epoch)``, so a resumed run sees exactly the
batches an uninterrupted one would; with ``num_replicas > 1`` every DDP rank takes its own
interleaved share of the same order (padded like ``DistributedSampler`` so ranks step together).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one rank; call :meth:`set_epoch` before each epoch."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        self.n, self.seed, self.num_replicas, self.rank = n, seed, num_replicas, rank
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch, self.start = 0, 0
        self.per_rank = math.ceil(n / num_replicas)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and skip its first ``start`` samples of this rank (mid-epoch resume)."""
        self.epoch, self.start = epoch, start

    def epoch_indices(self) -> list[int]:
        """This rank's full index list for the current epoch."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        total = self.per_rank * self.num_replicas
        if self.weights is not None:
            order = torch.multinomial(self.weights, total, replacement=True, generator=g).tolist()
        else:
            order = torch.randperm(self.n, generator=g).tolist()
            order += order[: total - self.n]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.start :])

    def __len__(self) -> int:
        return self.per_rank - self.start


def balanced_weights(targets: Sequence[int], num_classes: int) -> list[float]:
    """Per-sample weights 1/count(class): every class is drawn equally often on average."""
    counts = [0] * num_classes
    for t in targets:
        counts[t] += 1
    return [1.0 / counts[t] for t in targets]
