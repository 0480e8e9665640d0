"""Shortcut-audit shares and heatmap rendering."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxrtool.explain import render
from cxrtool.explain.audit import audit_heatmap, summarize
from cxrtool.explain.options import AuditCfg


def test_relevance_only_in_border_band():
    r = np.zeros((50, 50), dtype=np.float32)
    r[0:2, :] = 1.0  # a burnt-in text strip at the top
    r[25, 25] = -100.0  # negative relevance does not count
    stats = audit_heatmap(r, AuditCfg(border=0.1))
    assert stats["pos_share_border"] == pytest.approx(1.0)
    assert stats["pos_share_outside_lung"] == pytest.approx(1.0)


def test_uniform_relevance_matches_area_fraction():
    stats = audit_heatmap(np.ones((100, 100)), AuditCfg(border=0.1, lung_box=(0.2, 0.1, 0.8, 0.9)))
    assert stats["area_border"] == pytest.approx(1 - 0.8 * 0.8)
    assert stats["area_outside_lung"] == pytest.approx(1 - 0.6 * 0.8)
    assert stats["pos_share_border"] == pytest.approx(stats["area_border"])
    assert stats["pos_share_outside_lung"] == pytest.approx(stats["area_outside_lung"])


def test_central_relevance_and_no_positive_relevance():
    r = np.zeros((64, 64))
    r[30:34, 30:34] = 2.0
    assert audit_heatmap(r)["pos_share_border"] == 0.0
    assert math.isnan(audit_heatmap(-np.ones((8, 8)))["pos_share_border"])


def test_summary_groups_by_target_and_skips_errors():
    rows = [
        {
            "target": "covid",
            "pos_share_border": 0.6,
            "pos_share_outside_lung": 0.8,
            "area_border": 0.3,
            "area_outside_lung": 0.4,
        },
        {
            "target": "covid",
            "pos_share_border": 0.2,
            "pos_share_outside_lung": 0.4,
            "area_border": 0.3,
            "area_outside_lung": 0.4,
        },
        {"path": "bad.png", "error": "empty file"},
    ]
    (entry,) = summarize(rows)
    assert entry["n"] == 2
    assert entry["mean_share_border"] == pytest.approx(0.4)
    assert entry["ratio_outside_lung"] == pytest.approx(1.5)


def test_bad_audit_regions_are_rejected():
    with pytest.raises(ValueError):
        AuditCfg(border=0.6)
    with pytest.raises(ValueError):
        AuditCfg(lung_box=(0.8, 0.1, 0.2, 0.9))


def test_overlay_keeps_film_where_relevance_is_zero_and_is_centred():
    gray = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    r = np.zeros_like(gray)
    r[:, :8] = 1.0
    r[:, -8:] = -1.0
    img = np.asarray(render.overlay(gray, r, scale=1.0)).astype(int)
    film = np.round(gray * 255).astype(int)
    assert np.array_equal(img[:, 8:-8, 0], film[:, 8:-8])  # untouched where R = 0
    red, blue = img[:, :8].mean((0, 1)), img[:, -8:].mean((0, 1))
    assert red[0] > red[2] and blue[2] > blue[0]  # positive red, negative blue


def test_heatmap_palette_is_symmetric_around_zero():
    rgb = render.heatmap_rgb(np.array([[-1.0, 0.0, 1.0]]), scale=1.0)[0].astype(int)
    assert rgb[1].min() > 240  # zero is white
    assert rgb[0][2] > rgb[0][0] and rgb[2][0] > rgb[2][2]
    assert render.symmetric_scale(np.zeros((4, 4))) == 1.0


def test_panel_carries_a_colour_legend_below_the_tiles():
    """An all-positive map draws no blue in the tiles: the legend strip alone holds both palette ends and its text."""
    gray = np.full((40, 40), 0.5, dtype=np.float32)
    img = render.panel(gray, np.ones_like(gray), 1.0, "covid p=0.9", "covid")
    rgb = np.asarray(img).astype(int)
    lut = render.heatmap_rgb(np.array([-1.0, 1.0]), 1.0).astype(int)  # the palette's blue and red ends
    assert img.width >= 3 * 256
    tiles_end = img.height - 22  # title strip and tiles above, the 22-px legend strip below
    tiles, legend = rgb[:tiles_end], rgb[tiles_end:]

    def has(part: np.ndarray, colour: np.ndarray) -> bool:
        return bool(np.all(part == colour, axis=-1).any())

    assert has(tiles, lut[1]) and not has(tiles, lut[0])  # the map is all red
    assert has(legend, lut[0]) and has(legend, lut[1])  # the legend shows blue (against) and red (for)
    bar = legend[5:17, 4 : 4 + render.LEGEND_BAR_WIDTH]
    assert np.array_equal(bar[0, 0], lut[0]) and np.array_equal(bar[0, -1], lut[1])  # blue left, red right
    text = legend[:, 4 + render.LEGEND_BAR_WIDTH + 8 :]
    assert (text.max(-1) < 100).sum() > 50  # dark text pixels beside the bar
    assert render.legend_text("covid") == "red: evidence for covid, blue: against, white: neither"
