"""Reading what the report shows: predict's CSV/JSONL rows, explain's ``explain.csv``, a model card.

Columns are taken as they come: ``p:<class>`` probabilities (calibrated or not), and when a
newer predict writes them, ``ood_score`` and ``flag`` (``ok`` / ``out_of_distribution`` / ``view:lateral`` /
``header:<reason>``).  Nothing beyond ``path`` is required, so older and newer outputs both render.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from cxrtool.errors import CxrError
from cxrtool.fsutil import open_names

PROB_PREFIX = "p:"
PREDICT_COLUMNS = ("path", "predicted", "model_id", "error")  # what every predict CSV has


@dataclass
class ReportRow:
    """One film as predict saw it."""

    path: str
    predicted: str = ""
    probs: dict[str, float] = field(default_factory=dict)
    error: str = ""
    flag: str = ""
    ood_score: float | None = None
    model_id: str = ""
    backend: str = ""

    @property
    def flagged(self) -> bool:
        return bool(self.flag) and self.flag != "ok"


def _float(text: object) -> float | None:
    try:
        return None if text in (None, "") else float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _from_mapping(rec: dict) -> ReportRow:
    probs = rec.get("probabilities")
    if not isinstance(probs, dict):
        probs = {k[len(PROB_PREFIX) :]: rec[k] for k in rec if k.startswith(PROB_PREFIX)}
    return ReportRow(
        path=str(rec.get("path") or ""),
        predicted=str(rec.get("predicted") or ""),
        probs={k: v for k, v in ((k, _float(v)) for k, v in probs.items()) if v is not None},
        error=str(rec.get("error") or ""),
        flag=str(rec.get("flag") or ""),
        ood_score=_float(rec.get("ood_score")),
        model_id=str(rec.get("model_id") or ""),
        backend=str(rec.get("backend") or ""),
    )


def read_predictions(path: str | Path) -> tuple[list[ReportRow], list[str]]:
    """Rows of a predict output (``.csv`` or ``.jsonl``) and the class names in column order."""
    path = Path(path)
    try:
        with open_names(path) as fh:
            text = fh.read()
    except OSError as exc:
        raise CxrError(f"{path}: cannot read predictions ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".jsonl":
        rows, classes = [], []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise CxrError(f"{path}: line {number} is not JSON; not a predict output?") from None
            if not isinstance(rec, dict) or "path" not in rec or "probabilities" not in rec:
                raise CxrError(f"{path}: line {number} has no path / probabilities; not a predict output?")
            row = _from_mapping(rec)
            classes += [c for c in row.probs if c not in classes]
            rows.append(row)
    else:
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in PREDICT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CxrError(f"{path}: no {', '.join(missing)} column; not a predict output?")
        classes = [c[len(PROB_PREFIX) :] for c in reader.fieldnames if c.startswith(PROB_PREFIX)]
        rows = [_from_mapping(rec) for rec in reader]
    if not rows:
        raise CxrError(f"{path}: no rows")
    return rows, classes


def _explain_records(explain_dir: str | Path) -> tuple[Path, list[dict[str, str]]]:
    """``explain.csv`` of an explain output folder and its rows."""
    csv_path = Path(explain_dir) / "explain.csv"
    try:
        with open_names(csv_path) as fh:
            return csv_path, list(csv.DictReader(fh))
    except OSError as exc:
        raise CxrError(f"{csv_path}: cannot read explain results ({exc.strerror or exc})") from None


def read_explain_rows(explain_dir: str | Path) -> tuple[list[ReportRow], list[str]]:
    """Rows from ``explain.csv`` alone (``explain --html``): the predicted class and its probability per film."""
    csv_path, records = _explain_records(explain_dir)
    rows: dict[str, ReportRow] = {}
    for rec in records:
        path = rec.get("path") or ""
        if path in rows:
            continue
        prob = _float(rec.get("predicted_prob"))
        predicted = rec.get("predicted") or ""
        rows[path] = ReportRow(
            path=path,
            predicted=predicted,
            probs={predicted: prob} if predicted and prob is not None else {},
            error=rec.get("error") or "",
        )
    if not rows:
        raise CxrError(f"{csv_path}: no rows")
    classes: list[str] = []
    for r in rows.values():
        classes += [c for c in r.probs if c not in classes]
    return list(rows.values()), sorted(classes)


def read_overlays(explain_dir: str | Path) -> dict[str, Path]:
    """Input path -> overlay PNG from ``explain.csv`` (the first explained target of each film)."""
    csv_path, records = _explain_records(explain_dir)
    overlays: dict[str, Path] = {}
    for rec in records:
        overlay = rec.get("overlay") or ""
        if overlay and not rec.get("error") and rec.get("path") not in overlays:
            p = Path(overlay)
            overlays[rec["path"]] = p if p.is_absolute() or p.exists() else csv_path.parent / p
    return overlays
