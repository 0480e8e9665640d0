"""Augmentation suited to chest films: small rotation, scale, shift, brightness and contrast.

It runs on the resized grey image, between :func:`cxrtool.preprocess.resize_gray` and
:func:`cxrtool.preprocess.normalize`.  Horizontal flips are off by default: a flipped film puts
the heart on the right (an anatomy that is rare, situs inversus/dextrocardia) and mirrors the
L/R text markers, so the network would learn from images that do not occur.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class AugmentCfg:
    """Ranges of the random transforms (each drawn uniformly in ``[-x, +x]``)."""

    rotate_deg: float = 5.0
    scale: float = 0.05
    translate: float = 0.03  # fraction of the image side
    brightness: float = 0.1  # added, in [0, 1] grey units
    contrast: float = 0.1  # relative, around mid-grey
    hflip: bool = False


def augment(gray: np.ndarray, cfg: AugmentCfg, rng: np.random.Generator) -> np.ndarray:
    """One random augmentation of a float32 HxW image in [0, 1]; same ``rng`` state, same output.

    The draws happen in a fixed order whatever the ranges, so changing one range never shifts
    the random numbers of the others.
    """
    angle, scale, tx, ty, bright, contrast, flip = rng.uniform(-1.0, 1.0, size=7)
    h, w = gray.shape
    out = gray
    a = math.radians(angle * cfg.rotate_deg)
    s = 1.0 + scale * cfg.scale
    dx, dy = tx * cfg.translate * w, ty * cfg.translate * h
    if a or s != 1.0 or dx or dy:
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        cos, sin = math.cos(a) / s, math.sin(a) / s
        # Pillow wants the inverse map: output pixel (x, y) samples input at (ax + by + c, dx + ey + f).
        coeffs = (cos, sin, cx - cos * (cx + dx) - sin * (cy + dy), -sin, cos, cy + sin * (cx + dx) - cos * (cy + dy))
        pil = Image.fromarray(np.ascontiguousarray(out, dtype=np.float32), mode="F")
        out = np.asarray(
            pil.transform((w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=0.0)
        )
    if cfg.hflip and flip > 0:
        out = out[:, ::-1]
    out = (out - 0.5) * (1.0 + contrast * cfg.contrast) + 0.5 + bright * cfg.brightness
    return np.clip(out, 0.0, 1.0).astype(np.float32)
