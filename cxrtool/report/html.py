"""Predict rows (+ explain overlays, + a model card) -> one self-contained HTML page.

Thumbnails are made with the shared loader (:func:`cxrtool.images.load_image`), so a DICOM shows
as ``prep dicom`` renders it and no header data ever reaches the page; overlays are explain's own
PNGs, shrunk.  Everything is embedded as ``data:`` URIs; the page loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import datetime as _dt
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cxrtool import __version__
from cxrtool.errors import CxrError
from cxrtool.fsutil import atomic_write_text, safe_text
from cxrtool.report.inputs import ReportRow, read_explain_rows, read_overlays, read_predictions

if TYPE_CHECKING:
    from cxrtool.modelfile.loaded import LoadedModel

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "report.html.j2"
DEFAULT_CAVEAT = "Research software, not a medical device: do not use these results for diagnosis."


@dataclass
class ReportResult:
    """What was written: the page, how many rows, how many of them had a thumbnail / an overlay."""

    path: Path
    rows: int
    errors: int
    flagged: int
    thumbnails: int
    overlays: int
    per_class: Counter = field(default_factory=Counter)


def _data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fit(img: Image.Image, size: int) -> Image.Image:
    """Scaled so its longer side is ``size`` (up or down: a 32-px heatmap must stay readable)."""
    scale = size / max(img.size)
    new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(new, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BILINEAR)


def thumbnail_uri(path: Path, size: int) -> str | None:
    """A film's grey thumbnail as a data URI, or None when it cannot be read (its row says why)."""
    from cxrtool.images import load_image

    try:
        gray = load_image(path)
    except CxrError:
        return None
    return _data_uri(_fit(Image.fromarray((np.clip(gray, 0, 1) * 255).round().astype(np.uint8)), size))


def overlay_uri(path: Path, size: int) -> str | None:
    try:
        with Image.open(path) as im:
            return _data_uri(_fit(im.convert("RGB"), size))
    except (OSError, ValueError):
        return None


def _resolve(row_path: str, base: Path) -> Path:
    p = Path(row_path)
    return p if p.is_absolute() or p.exists() else base / p


def _card_context(model: LoadedModel) -> dict[str, Any]:
    from cxrtool.trust.shortcut import card_warning

    card = model.card
    scalars = {k: v for k, v in card.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {
        "file": model.path.name,
        "arch": card.arch,
        "task": getattr(card.task, "name", str(card.task)),
        "classes": list(card.class_names),
        "input_size": card.preprocess.input_size,
        "dataset": {k: v for k, v in card.dataset.items() if isinstance(v, (str, int, float))},
        "metrics": scalars,
        "lineage": [str(e.get("file") or e.get("path") or e.get("model_id") or e) for e in card.lineage],
        "created": card.created,
        "version": card.cxrtool_version,
        "shortcut": card_warning(card.dataset),
        "ood_threshold": (card.ood or {}).get("threshold"),
        "ood_quantile": (card.ood or {}).get("quantile"),
    }


def build_report(
    predictions: str | Path | None,
    out: str | Path,
    *,
    explain_dir: str | Path | None = None,
    model: LoadedModel | None = None,
    title: str | None = None,
    caveats: Sequence[str] = (),
    thumb_size: int = 112,
) -> ReportResult:
    """Render ``predictions`` (a predict ``.csv``/``.jsonl``) into ``out``, written atomically.

    ``explain_dir`` adds each film's heatmap overlay (from its ``explain.csv``); with
    ``predictions=None`` the rows come from that ``explain.csv`` too (predicted class only); ``model`` (a
    run's opened checkpoint, ONNX export or engine: :func:`~cxrtool.modelfile.loaded.open_model`) adds the
    model card; ``caveats`` are shown above everything.
    """
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    out = Path(out)
    if thumb_size < 16:
        raise CxrError(f"thumbnail size must be at least 16 px, not {thumb_size}")
    if predictions is None:
        if explain_dir is None:
            raise CxrError("a report needs predictions or an explain folder")
        source = Path(explain_dir) / "explain.csv"
        rows, classes = read_explain_rows(explain_dir)
    else:
        source = Path(predictions)
        rows, classes = read_predictions(source)
    overlays = read_overlays(explain_dir) if explain_dir else {}
    card = _card_context(model) if model is not None else None
    if card and card["shortcut"]:
        caveats = [*caveats, card["shortcut"]]
    base = source.parent

    table: list[dict[str, Any]] = []
    errors: list[ReportRow] = []
    per_class: Counter = Counter()
    n_thumbs = n_overlays = 0
    for r in rows:
        if r.error:
            errors.append(r)
            continue
        per_class[r.predicted or "(none)"] += 1
        thumb = thumbnail_uri(_resolve(r.path, base), thumb_size)
        overlay_path = overlays.get(r.path)
        overlay = overlay_uri(overlay_path, thumb_size) if overlay_path else None
        n_thumbs += thumb is not None
        n_overlays += overlay is not None
        table.append(
            {
                "row": r,
                "name": Path(r.path).name,
                "thumb": thumb,
                "overlay": overlay,
                "top": max(r.probs.values(), default=0.0),
            }
        )
    flagged = [t["row"] for t in table if t["row"].flagged]
    flags = Counter((r.flag.split(":", 1)[0] if r.flag else "") for r in flagged)

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    html = env.get_template(TEMPLATE).render(
        title=title or f"cxrtool report: {source.name}",
        caveats=[*caveats, DEFAULT_CAVEAT],
        generated=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        version=__version__,
        source=str(source),
        explain_dir=str(explain_dir) if explain_dir else "",
        classes=classes,
        per_class=[(c, per_class.get(c, 0)) for c in classes]
        + sorted((c, n) for c, n in per_class.items() if c not in classes),
        total=len(rows),
        ok=len(table),
        errors=errors,
        flagged=flagged,
        flag_kinds=sorted(flags.items()),
        has_flags=any(r.flag for r in rows),
        has_ood=any(r.ood_score is not None for r in rows),
        has_overlays=bool(overlays),
        models=sorted({(r.model_id, r.backend) for r in rows if r.model_id}),
        card=card,
        table=table,
    )
    atomic_write_text(out, safe_text(html))  # a name that is not UTF-8 is shown escaped (\xe9), never a crash
    return ReportResult(out, len(rows), len(errors), len(flagged), n_thumbs, n_overlays, per_class)
