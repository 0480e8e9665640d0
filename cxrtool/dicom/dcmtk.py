"""DCMTK's ``dcmj2pnm`` as an independent reference renderer (agreement tests and benchmark).

Not used for conversion: it only shows that our pipeline renders what a second, unrelated
implementation renders under the same windowing.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrtool.dicom.pixels import select_voi
from cxrtool.dicom.read import read_dataset

DCMJ2PNM = "dcmj2pnm"


def dcmj2pnm_path() -> str | None:
    return shutil.which(DCMJ2PNM)


def window_args(path: str | Path, window: str) -> list[str]:
    """The ``dcmj2pnm`` VOI options that mean the same as our ``window`` policy for this file."""
    if window == "none":
        return ["--no-windowing"]
    if window == "minmax":  # a computed window is linear even when the file asks for SIGMOID
        return ["--min-max-window", "--linear-function"]
    voi = select_voi(read_dataset(path, stop_before_pixels=True), window="dicom")
    if voi.kind == "lut":
        return ["--use-voi-lut", "1"]
    if voi.kind == "window":
        return ["--use-window", "1"]
    return ["--min-max-window", "--linear-function"]


def dcmj2pnm_command(
    path: str | Path, out: str | Path, *, window: str = "dicom", bits: int = 8, frame: int = 0, fmt: str = "pgm"
) -> list[str]:
    """``fmt`` ``pgm`` (8-bit raw PGM: fast, for comparisons) or ``png`` (non-interlaced PNG, ``bits`` deep)."""
    if fmt == "pgm" and bits == 8:
        out_args = ["--write-raw-pnm"]
    else:
        out_args = ["--write-png" if bits == 8 else "--write-16-bit-png", "--nointerlace"]
    return [DCMJ2PNM, "--quiet", "--frame", str(frame + 1), *window_args(path, window), *out_args, str(path), str(out)]


def dcmtk_render(
    path: str | Path, *, window: str = "dicom", bits: int = 8, frame: int = 0, timeout: float = 120
) -> np.ndarray:
    """Render one frame (0-based) with ``dcmj2pnm``; raises ``RuntimeError`` when DCMTK cannot read it."""
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="cxrtool-dcmtk-") as tmp:
        out = Path(tmp) / ("out.pgm" if bits == 8 else "out.png")
        cmd = dcmj2pnm_command(path, out, window=window, bits=bits, frame=frame)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.is_file():
            proc = subprocess.run(  # again without --quiet, for the reason
                [a for a in cmd if a != "--quiet"],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            reason = " ".join(proc.stderr.split())[:200] or f"exit code {proc.returncode}"
            raise RuntimeError(f"dcmj2pnm cannot render {Path(path).name}: {reason}")
        with Image.open(out) as im:
            return np.asarray(im)


@dataclass(frozen=True)
class Agreement:
    """How one file compares with DCMTK: max |difference| and the share of differing pixels."""

    file: str
    window: str
    max_diff: int
    pct_differing: float
    shape: tuple[int, ...]
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.max_diff <= 1


def compare(ours: np.ndarray, theirs: np.ndarray, *, file: str, window: str) -> Agreement:
    if ours.shape != theirs.shape:
        return Agreement(file, window, -1, 100.0, ours.shape, f"shape {ours.shape} vs DCMTK {theirs.shape}")
    diff = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
    return Agreement(file, window, int(diff.max()), float(100.0 * np.count_nonzero(diff) / diff.size), ours.shape)
