"""The per-epoch log files of a run: ``log.jsonl`` (one record per epoch) and ``log.csv`` (flattened)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtool.fsutil import atomic_write_text


@dataclass(frozen=True)
class EpochStats:
    """One epoch's timing for its log record (``images_per_s``, ``epoch_time_s``)."""

    seconds: float
    seen: int  # images, all ranks
    frozen: bool


def write_logs(out: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite both logs from the whole history (atomically, so a killed run leaves whole files)."""
    atomic_write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    rows = [flatten(r) for r in history]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "log.csv", buf.getvalue())


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts to ``a:b`` columns for the CSV log (``val_per_class:covid:recall``)."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten(v, f"{key}:")
        elif isinstance(v, list):
            out[key] = json.dumps(v)
        elif isinstance(v, float) and math.isnan(v):
            out[key] = ""
        else:
            out[key] = v
    return out
