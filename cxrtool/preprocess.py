"""The one definition of how a film becomes a model input (numpy + Pillow, no torch).

Training, predict (every backend), export parity checks and explain all call these, so a
checkpoint's :class:`~cxrtool.config.PreprocessCfg` reproduces its input exactly.
Training augmentation runs between :func:`resize_gray` and :func:`normalize`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cxrtool.config import PreprocessCfg


def resize_gray(img: np.ndarray, cfg: PreprocessCfg) -> np.ndarray:
    """Resize a float32 HxW image in [0, 1] to ``cfg.input_size`` squared (anti-aliased bilinear)."""
    if img.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {img.shape}")
    size = cfg.input_size
    h, w = img.shape
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    if cfg.resize == "stretch":
        out = pil.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(out, dtype=np.float32).clip(0.0, 1.0)
    if cfg.resize == "letterbox":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        small = np.asarray(pil.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
        canvas = np.zeros((size, size), dtype=np.float32)
        top, left = (size - nh) // 2, (size - nw) // 2
        canvas[top : top + nh, left : left + nw] = small
        return canvas.clip(0.0, 1.0)
    # center_crop
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    big = np.asarray(pil.resize((nw, nh), Image.Resampling.BILINEAR), dtype=np.float32)
    top, left = (nh - size) // 2, (nw - size) // 2
    return big[top : top + size, left : left + size].clip(0.0, 1.0)


def normalize(gray: np.ndarray, cfg: PreprocessCfg) -> np.ndarray:
    """Replicate the grey channel to ``cfg.channels`` and apply mean/std: HxW -> CxHxW float32."""
    mean = np.asarray(cfg.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.std, dtype=np.float32)[:, None, None]
    stacked = np.broadcast_to(gray[None, :, :], (cfg.channels, *gray.shape))
    return ((stacked - mean) / std).astype(np.float32)


def to_model_input(img: np.ndarray, cfg: PreprocessCfg) -> np.ndarray:
    """Full inference preprocessing of one grey image: resize, then normalise."""
    return normalize(resize_gray(img, cfg), cfg)


def load_gray(path: str | Path, cfg: PreprocessCfg) -> np.ndarray:
    """Load a film (any supported file, DICOM by content, ``cfg.window`` for DICOM) resized to the input size.

    The step before :func:`normalize`: training augments this, explain overlays it.
    Raises :class:`~cxrtool.errors.ImageLoadError` naming the file when it cannot be read.
    """
    from cxrtool.images import load_image

    return resize_gray(load_image(path, window=cfg.window), cfg)


def load_input(path: str | Path, cfg: PreprocessCfg) -> np.ndarray:
    """Load a film and preprocess it for the model: CxHxW float32 (:func:`load_gray`, then :func:`normalize`).

    Raises :class:`~cxrtool.errors.ImageLoadError` naming the file when it cannot be read.
    """
    return normalize(load_gray(path, cfg), cfg)
