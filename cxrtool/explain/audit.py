"""Shortcut audit: how much positive relevance lies where the lungs are not.

A model that reads burnt-in text, markers or collimation edges (Bassi & Attux 2020 saw exactly
that with LRP) puts its positive relevance in the image border and outside the lung fields.
Per heatmap we measure the share of positive relevance in a border band and outside a central
lung box, next to the share a uniform heatmap would give (the region's area fraction): a ratio
well above 1 means the model looks there more than chance.  The boxes are fractions of the model
input, so they assume a roughly centred PA/AP film; they are a screening aid, not a segmentation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

from cxrtool.explain.options import AuditCfg

AUDIT_COLUMNS = ("pos_share_border", "pos_share_outside_lung", "area_border", "area_outside_lung")


def audit_heatmap(relevance: np.ndarray, cfg: AuditCfg = AuditCfg()) -> dict[str, float]:
    """Shares of positive relevance in the border band and outside the lung box of one HxW map.

    Shares are NaN when the map has no positive relevance at all.
    """
    border, outside = cfg.masks(*relevance.shape)
    pos = np.clip(relevance, 0, None)
    total = float(pos.sum())
    share = (lambda m: float(pos[m].sum()) / total) if total > 0 else (lambda m: float("nan"))
    return {
        "pos_share_border": share(border),
        "pos_share_outside_lung": share(outside),
        "area_border": float(border.mean()),
        "area_outside_lung": float(outside.mean()),
    }


def summarize(rows: Iterable[Mapping[str, object]]) -> list[dict[str, object]]:
    """Per target class: count, mean shares and their ratio to the uniform (area) share."""
    groups: dict[str, list[Mapping[str, object]]] = defaultdict(list)
    for row in rows:
        if not row.get("error") and row.get("target"):
            groups[str(row["target"])].append(row)
    summary = []
    for target, items in sorted(groups.items()):
        entry: dict[str, object] = {"target": target, "n": len(items)}
        for region in ("border", "outside_lung"):
            shares = np.array([float(r[f"pos_share_{region}"]) for r in items], dtype=float)
            area = float(items[0][f"area_{region}"])
            mean = float(np.nanmean(shares)) if np.isfinite(shares).any() else float("nan")
            entry[f"mean_share_{region}"] = mean
            entry[f"ratio_{region}"] = mean / area if area > 0 else float("nan")
        summary.append(entry)
    return summary
