"""The torch device a device name means (``auto``, ``cpu``, ``cuda``, ``cuda:N``): one rule for train, trust and
explain.

torch is imported when a name is resolved, not when this module is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrtool.errors import CxrError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; plain ``cuda`` means this process's local rank."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CxrError(f"device {name!r} requested but no CUDA device is available")
        return torch.device(f"cuda:{local_rank}" if name == "cuda" else name)
    if name != "cpu":
        raise CxrError(f"device must be auto, cpu or cuda[:N], not {name!r}")
    return torch.device("cpu")
