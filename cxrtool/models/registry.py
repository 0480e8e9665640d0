"""Name -> builder registry: the values ``--arch`` accepts come from here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the builders, not by ``--help``
    import torch.nn as nn

#: what a run without ``--arch`` and without a parent checkpoint builds
DEFAULT_ARCH = "densenet121"

_ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register_arch(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _ARCHS[name] = fn
        return fn

    return deco


def list_archs() -> list[str]:
    _ensure_loaded()
    return sorted(_ARCHS)


def build_model(arch: str, *, num_classes: int, in_chans: int = 3) -> nn.Module:
    """Build an architecture with freshly initialised weights (no download ever happens here)."""
    _ensure_loaded()
    try:
        builder = _ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(_ARCHS)}") from None
    return builder(num_classes=num_classes, in_chans=in_chans)


def _ensure_loaded() -> None:
    import cxrtool.models.densenet  # noqa: F401  (registers its builders)
