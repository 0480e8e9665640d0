"""Shared option types and parsers: choices come from the registries, defaults from the core's dataclasses.

Nothing here imports numpy or torch, so ``cxrtool --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any

import typer

from cxrtool.errors import CxrError
from cxrtool.infer.backends import BACKENDS


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass field ``name`` (calling a ``default_factory``): help texts never retype it."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"{cls.__name__}.{name} has no default")


class Window(str, Enum):
    """DICOM VOI policies; kept equal to ``cxrtool.dicom.pixels.WINDOW_POLICIES`` by a test (no numpy at --help)."""

    dicom = "dicom"
    minmax = "minmax"
    none = "none"


#: ``--backend`` choices: ``auto`` plus every name in the backend registry.
Backend = Enum("Backend", {name: name for name in ("auto", *BACKENDS)}, type=str)  # type: ignore[misc]
#: ``bench --backend``: the registry's names (bench measures each; ``auto`` is not one).
BenchBackend = Enum("BenchBackend", {name: name for name in BACKENDS}, type=str)  # type: ignore[misc]



def parse_shard_option(value: str | None) -> tuple[int, int] | None:
    """``--shard i/n``: exactly digits, a slash, digits (no spaces or signs), 1 <= i <= n; a usage error otherwise."""
    if value is None:
        return None
    from cxrtool.infer.jobs import parse_shard

    try:
        return parse_shard(value)
    except CxrError as exc:
        raise typer.BadParameter(str(exc)) from None
