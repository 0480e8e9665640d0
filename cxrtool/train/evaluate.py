"""``evaluate``: a checkpoint on one manifest split -> metrics JSON, predictions CSV, confusion and ROC PNGs.

Preprocessing comes from the checkpoint's card, so the numbers are for exactly the input the
model was trained on.  An unreadable image becomes an error row in the CSV and is left out of
the metrics; the rest are still evaluated.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from cxrtool.config import resolve_preprocess
from cxrtool.data import ManifestDataset
from cxrtool.errors import CxrError
from cxrtool.fsutil import atomic_write_text
from cxrtool.manifest import read_manifest
from cxrtool.models.checkpoint import file_sha256, load_checkpoint
from cxrtool.train.metrics import bootstrap_ci, compute_metrics
from cxrtool.train.plots import plot_confusion, plot_roc
from cxrtool.train.runtime import predict_logits, resolve_device, resolve_runtime, to_probs


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    n_ok: int
    failures: list[tuple[str, str]]  # (path, reason)
    files: list[Path]


def evaluate(
    checkpoint: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    *,
    split: str | None = "test",
    batch_size: int = 64,
    device: str = "auto",
    amp: str = "none",
    workers: int = 0,
    bootstrap: int = 1000,
    seed: int = 0,
    threshold: float = 0.5,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Evaluate ``checkpoint`` on the ``split`` rows of ``manifest`` (``None``: all rows) into ``out_dir``."""
    model, card = load_checkpoint(checkpoint)
    rows = read_manifest(manifest).select(split)
    if not rows.rows:
        raise CxrError(f"{manifest}: no rows with split {split!r}")
    preprocess = resolve_preprocess(card.preprocess)
    dataset = ManifestDataset(
        rows, class_names=card.class_names, task=card.task, preprocess=preprocess, skip_errors=True
    )
    runtime, _ = resolve_runtime(resolve_device(device), amp, None)
    model = runtime.prepare(model).eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=runtime.cuda)

    def counted():
        for batch in loader:
            yield batch
            if on_batch is not None:
                on_batch(len(batch[2]))

    logits, targets, _, errors = predict_logits(model, counted(), runtime)
    probs = to_probs(torch.from_numpy(logits), card.task).numpy()
    ok = np.array([not e for e in errors], dtype=bool)
    failures = [(rows.rows[i]["path"], e) for i, e in enumerate(errors) if e]
    if not ok.any():
        raise CxrError(f"{manifest}: none of the {len(errors)} images could be read (first: {failures[0][1]})")
    p, t = probs[ok], targets[ok]
    metrics = compute_metrics(card.task, p, t, card.class_names, threshold)
    metrics["ci"] = bootstrap_ci(card.task, p, t, len(card.class_names), n=bootstrap, seed=seed, threshold=threshold)
    metrics |= {"checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint), "manifest": str(manifest)}
    metrics |= {"split": split, "task": card.task, "class_names": card.class_names, "failed": len(failures)}

    out = Path(out_dir)
    files = [out / "metrics.json", out / "predictions.csv", out / "roc.png"]
    atomic_write_text(files[0], json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(files[1], _predictions_csv(rows.rows, probs, errors, card.class_names, card.task, threshold))
    truth = np.eye(len(card.class_names))[t.astype(int)] if card.task == "multiclass" else t
    plot_roc(p, truth, card.class_names, files[2], title=f"ROC, {split or 'all'} (n={int(ok.sum())})")
    if card.task == "multiclass":
        files.append(out / "confusion_matrix.png")
        plot_confusion(
            np.asarray(metrics["confusion_matrix"]),
            card.class_names,
            files[-1],
            title=f"{split or 'all'} (n={int(ok.sum())})",
        )
    return EvalResult(metrics, int(ok.sum()), failures, files)


def _predictions_csv(
    rows: list[dict[str, str]],
    probs: np.ndarray,
    errors: list[str],
    class_names: list[str],
    task: str,
    threshold: float,
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "pred", *[f"p:{c}" for c in class_names], "error"])
    for row, p, err in zip(rows, probs, errors):
        if err:
            writer.writerow([row["path"], row.get("label", ""), "", *[""] * len(class_names), err])
            continue
        if task == "multiclass":
            pred = class_names[int(p.argmax())]
        else:
            pred = "|".join(c for c, v in zip(class_names, p) if v >= threshold)
        writer.writerow([row["path"], row.get("label", ""), pred, *[f"{v:.6f}" for v in p], ""])
    return buf.getvalue()
