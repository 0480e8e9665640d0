"""torch.distributed plumbing for ``torchrun``: DDP on NCCL (CUDA) or gloo (CPU); only rank 0 writes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(use_cuda: bool) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (single process otherwise).

    On CUDA each process first makes its local rank's GPU current and binds the group to it
    (``device_id``): without that every rank's NCCL collectives, ``all_gather_object`` and
    ``barrier()`` run on GPU 0 (pytorch/pytorch#75619).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group(backend="gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's BatchNorm statistics to every rank (DDP syncs parameters, each rank keeps its own stats)."""
    for buf in model.buffers():
        dist.broadcast(buf, 0)


def all_gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``all_gather_object``)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def any_rank(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on any (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_sum(values: list[float], info: DistInfo, device: torch.device) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_file(path: Path, info: DistInfo) -> bytes | None:
    """Rank 0's bytes of ``path`` on every rank (the others need not see its filesystem); None if rank 0 has no
    such file."""
    box = [path.read_bytes() if info.is_main and path.is_file() else None]
    if info.enabled:
        dist.broadcast_object_list(box, src=0)
    return box[0]
