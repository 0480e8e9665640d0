"""Name -> builder registry: the values ``--arch`` accepts come from here.

Built-in architectures are named by import path (``module:function``) and imported on first use,
like pydicom's decoder plugins, so listing them imports no torch and the builders' module does not
import this one back.  :func:`register_arch` adds others at run time (tests use it for tiny nets).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported by the builders, not by ``--help``
    import torch.nn as nn

#: what a run without ``--arch`` and without a parent checkpoint builds
DEFAULT_ARCH = "densenet121"

_BUILTIN = {
    "densenet121": "cxrtool.models.densenet:densenet121",
    "densenet201": "cxrtool.models.densenet:densenet201",
}
_ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register_arch(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _ARCHS[name] = fn
        return fn

    return deco


def list_archs() -> list[str]:
    return sorted({*_BUILTIN, *_ARCHS})


def build_model(arch: str, *, num_classes: int, in_chans: int = 3) -> nn.Module:
    """Build an architecture with freshly initialised weights (no download ever happens here)."""
    if arch not in _ARCHS and arch in _BUILTIN:
        module, _, name = _BUILTIN[arch].partition(":")
        _ARCHS[arch] = getattr(importlib.import_module(module), name)
    try:
        builder = _ARCHS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; choose from {list_archs()}") from None
    return builder(num_classes=num_classes, in_chans=in_chans)
