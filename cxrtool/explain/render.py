"""Heatmap rendering with Pillow: overlay on the film and a labelled side-by-side panel.

Colours use zennit's symmetric ``bwr`` palette centred on zero (blue negative, white zero, red
positive).  Maps are scaled by a high percentile of ``|R|`` rather than the maximum, so one hot
pixel cannot wash out the rest; the scale is written into the panel.  In the overlay a pixel's
opacity grows with ``|R|``, so irrelevant regions show the film unchanged.  Every panel carries a
legend (the palette from blue to red and what the two ends mean): a heatmap without one reads as
"hot spots" whatever its sign.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SCALE_PERCENTILE = 99.5
LEGEND_BAR_WIDTH = 128  # the legend's palette strip, pixels


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


def legend_text(explained: str) -> str:
    """What the colours mean, for the panel's legend (``explained``: what the map is evidence for)."""
    return f"red: evidence for {explained}, blue: against, white: neither"


def panel(
    gray: np.ndarray, relevance: np.ndarray, scale: float, title: str, explained: str, min_side: int = 256
) -> Image.Image:
    """``[film | heatmap | overlay]`` with a title line (class, probability, composite, scale) and,
    below the tiles, a legend: the palette from ``-scale`` to ``+scale`` and :func:`legend_text`."""
    tiles = [
        Image.fromarray(np.round(gray * 255).astype(np.uint8), mode="L").convert("RGB"),
        Image.fromarray(heatmap_rgb(relevance, scale), mode="RGB"),
        overlay(gray, relevance, scale),
    ]
    h, w = gray.shape
    zoom = max(1, -(-min_side // max(h, w)))  # tiny inputs are enlarged so the text fits
    tiles = [t.resize((w * zoom, h * zoom), Image.Resampling.NEAREST) for t in tiles]
    font = ImageFont.load_default()
    header, footer, bar = 22, 22, (LEGEND_BAR_WIDTH, 12)
    top = header + h * zoom
    canvas = Image.new("RGB", (3 * w * zoom + 8, top + footer), "white")
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * (w * zoom + 4), header))
    ramp = np.linspace(-scale, scale, bar[0])[None, :].repeat(bar[1], 0)
    canvas.paste(Image.fromarray(heatmap_rgb(ramp, scale), mode="RGB"), (4, top + 5))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((3, top + 4, 4 + bar[0], top + 5 + bar[1]), outline="black")
    draw.text((4, 4), title, fill="black", font=font)
    draw.text((bar[0] + 12, top + 5), legend_text(explained), fill="black", font=font)
    return canvas
