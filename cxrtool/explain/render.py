"""Heatmap rendering with Pillow: overlay on the film and a labelled side-by-side panel.

Colours use zennit's symmetric ``bwr`` palette centred on zero (blue negative, white zero, red
positive).  Maps are scaled by a high percentile of ``|R|`` rather than the maximum, so one hot
pixel cannot wash out the rest; the scale is written into the panel.  In the overlay a pixel's
opacity grows with ``|R|``, so irrelevant regions show the film unchanged.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SCALE_PERCENTILE = 99.5


def symmetric_scale(relevance: np.ndarray, percentile: float = SCALE_PERCENTILE) -> float:
    """The value mapped to full colour: a high percentile of ``|R|`` (1.0 for an all-zero map)."""
    scale = float(np.percentile(np.abs(relevance), percentile))
    if scale <= 0:
        scale = float(np.abs(relevance).max())
    return scale if scale > 0 else 1.0


def heatmap_rgb(relevance: np.ndarray, scale: float) -> np.ndarray:
    """HxW relevance -> HxWx3 uint8 via zennit's ``bwr`` palette, zero at the palette's centre."""
    from zennit.image import palette

    lut = np.frombuffer(bytes(palette("bwr")), dtype=np.uint8).reshape(-1, 3)
    idx = np.clip(np.round((relevance / scale + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return lut[idx]


def overlay(gray: np.ndarray, relevance: np.ndarray, scale: float, max_alpha: float = 0.85) -> Image.Image:
    """Blend the heatmap over a grey film (HxW in [0, 1], same shape as ``relevance``)."""
    if gray.shape != relevance.shape:
        raise ValueError(f"film {gray.shape} and relevance {relevance.shape} differ in shape")
    alpha = (np.clip(np.abs(relevance) / scale, 0, 1) ** 0.7 * max_alpha)[..., None]
    film = np.repeat(gray[..., None] * 255.0, 3, axis=2)
    out = film * (1 - alpha) + heatmap_rgb(relevance, scale).astype(np.float32) * alpha
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8), mode="RGB")


def panel(gray: np.ndarray, relevance: np.ndarray, scale: float, title: str, min_side: int = 256) -> Image.Image:
    """``[film | heatmap | overlay]`` with a title line (class, probability, composite, scale)."""
    tiles = [
        Image.fromarray(np.round(gray * 255).astype(np.uint8), mode="L").convert("RGB"),
        Image.fromarray(heatmap_rgb(relevance, scale), mode="RGB"),
        overlay(gray, relevance, scale),
    ]
    h, w = gray.shape
    zoom = max(1, -(-min_side // max(h, w)))  # tiny inputs are enlarged so the text fits
    tiles = [t.resize((w * zoom, h * zoom), Image.Resampling.NEAREST) for t in tiles]
    font = ImageFont.load_default()
    header = 22
    canvas = Image.new("RGB", (3 * w * zoom + 8, h * zoom + header), "white")
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * (w * zoom + 4), header))
    ImageDraw.Draw(canvas).text((4, 4), title, fill="black", font=font)
    return canvas
