"""Shared option types and parsers: choices come from the registries, defaults from the core's dataclasses.

Nothing here imports numpy or torch, so ``cxrtool --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
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


#: Inputs with this scheme prefix are remote (DICOMweb URLs), not paths that must exist here.
REMOTE_PREFIX = "dicomweb+"


def check_inputs(paths: Sequence[str | Path] | None) -> int | None:
    """Every input exists (or is a ``dicomweb+`` URL) and every folder holds a candidate file; else a usage error.

    Runs before any progress line, so a typo gives one line and exit 2 instead of an error row and exit 1.
    Returns the number of candidate files (the progress total), None when a remote input is among them.
    """
    from cxrtool.inputs import iter_input_files

    total: int | None = 0
    for path in map(Path, paths or []):
        if str(path).startswith(REMOTE_PREFIX):
            total = None
            continue
        if not path.exists():
            raise CxrError(f"{path}: no such file or folder; check the path (folders are searched recursively)")
        found = sum(1 for _ in iter_input_files([path]))
        total = None if total is None else total + found
        if path.is_dir() and not found:
            raise CxrError(
                f"{path}: no image or DICOM files in this folder or below (hidden files and .csv/.json/.txt/.md/.npy "
                "files are skipped); give the folder that holds the films"
            )
    return total


def require_checkpoint(model: Path, command: str) -> None:
    """Commands that need torch weights (explain, calibrate) refuse an export with the fix, before loading it."""
    from cxrtool.modelfile import ENGINE_SUFFIX, IR_SUFFIX, ONNX_SUFFIX

    if model.suffix.lower() in (ONNX_SUFFIX, IR_SUFFIX, ENGINE_SUFFIX):
        raise CxrError(
            f"{model}: {command} needs the checkpoint (.safetensors), not an export; "
            "give the .safetensors file it was exported from"
        )


def device_option(*, auto: bool) -> Any:
    """A ``--device`` callback: ``cpu``, ``cuda``, ``cuda:N`` (and ``auto`` where the command picks), else exit 2."""
    names = ("auto", "cpu", "cuda", "cuda:N") if auto else ("cpu", "cuda", "cuda:N")

    def check(value: str) -> str:
        if value in ("gpu", "cuda:gpu") or value.startswith("gpu:"):
            raise typer.BadParameter(f"{value!r} is not a device name; use cuda (or cuda:N for the N-th GPU)")
        if value == "cpu" or (auto and value == "auto") or re.fullmatch(r"cuda(:\d+)?", value):
            return value
        raise typer.BadParameter(f"unknown device {value!r}; use {', '.join(names[:-1])} or {names[-1]}")

    return check
