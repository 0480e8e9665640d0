"""``evaluate``: a checkpoint on one manifest split -> metrics JSON, predictions CSV, confusion, ROC and
reliability PNGs.

Preprocessing comes from the checkpoint's card, so the numbers are for exactly the input the
model was trained on.  An unreadable image becomes an error row in the CSV and is left out of
the metrics; the rest are still evaluated.

Probabilities are the calibrated ones (the card's temperature, :mod:`cxrtool.trust`), as predict
reports them; ``metrics.json`` has ``ece``/``brier`` of the raw model (T = 1) and
``ece_calibrated``/``brier_calibrated`` after scaling, and, for a model with OOD statistics, the
share of films flagged by any check (``ood_flagged``: OOD score, view rules).  Every film also passes the view rules
(:mod:`cxrtool.trust.view`), and the split's true labels the shortcut audit's thumbnail probe
(``shortcut`` in ``metrics.json``: the warning line, or null).
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
from cxrtool.devices import resolve_device
from cxrtool.errors import CxrError
from cxrtool.fsutil import atomic_write_text
from cxrtool.manifest import read_manifest
from cxrtool.modelfile.loaded import open_model
from cxrtool.models.checkpoint import model_from_loaded
from cxrtool.task import Task
from cxrtool.train.config import EVAL_DEFAULTS
from cxrtool.train.metrics import bootstrap_ci, compute_metrics
from cxrtool.train.plots import plot_confusion, plot_reliability, plot_roc
from cxrtool.train.runtime import Runtime, resolve_runtime
from cxrtool.trust import Assessment, load_trust
from cxrtool.trust.fit import split_shortcut, thumbnails
from cxrtool.trust.temperature import calibration_metrics, reliability, scaled_probs
from cxrtool.trust.view import view_verdicts


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
    split: str | None = EVAL_DEFAULTS.split,
    batch_size: int = EVAL_DEFAULTS.batch_size,
    device: str = EVAL_DEFAULTS.device,
    amp: str = EVAL_DEFAULTS.amp,
    workers: int = EVAL_DEFAULTS.workers,
    bootstrap: int = EVAL_DEFAULTS.bootstrap,
    seed: int = EVAL_DEFAULTS.seed,
    threshold: float | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Evaluate ``checkpoint`` on the ``split`` rows of ``manifest`` (``None``: all rows) into ``out_dir``."""
    loaded = open_model(checkpoint)  # the run's one read: weights, card, trust statistics and sha256
    model, card = model_from_loaded(loaded), loaded.card
    task = card.task.with_threshold(threshold)
    rows = read_manifest(manifest).select(split)
    if not rows.rows:
        raise CxrError(f"{manifest}: no rows with split {split!r}")
    preprocess = resolve_preprocess(card.preprocess)
    dataset = ManifestDataset(rows, class_names=card.class_names, task=task, preprocess=preprocess, skip_errors=True)
    runtime, _ = resolve_runtime(resolve_device(device), amp, None)
    model = runtime.prepare(model).eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=runtime.cuda)

    def counted():
        for batch in loader:
            yield batch
            if on_batch is not None:
                on_batch(len(batch[2]))

    logits, features, targets, errors, views, thumbs = _outputs(model, counted(), runtime)
    trust = load_trust(loaded)  # the activation is the card's; the decision below uses ``task``
    verdicts = trust.assess(logits, features if trust.has_ood else None, views=views)
    errors = [e or v.error for e, v in zip(errors, verdicts)]  # a non-finite output is an error row, not a metric
    probs = np.stack([v.probs for v in verdicts])
    ok = np.array([not e for e in errors], dtype=bool)
    failures = [(rows.rows[i]["path"], e) for i, e in enumerate(errors) if e]
    if not ok.any():
        raise CxrError(f"{manifest}: none of the {len(errors)} images gave a result (first: {failures[0][1]})")
    p, t = probs[ok], targets[ok]
    metrics = compute_metrics(task, p, t, card.class_names)
    metrics["ci"] = bootstrap_ci(task, p, t, len(card.class_names), n=bootstrap, seed=seed)
    metrics |= calibration_metrics(task, logits[ok], t, trust.temperature)
    metrics["shortcut"] = split_shortcut(card, thumbs[ok], t)
    if trust.has_ood:
        flagged = [v.flagged for v, good in zip(verdicts, ok) if good]
        metrics |= {"ood_flagged": int(sum(flagged)), "ood_flagged_share": float(np.mean(flagged))}
        metrics["ood_threshold"] = trust.ood.threshold
    metrics |= {"checkpoint": str(checkpoint), "checkpoint_sha256": loaded.sha256, "manifest": str(manifest)}
    metrics |= {"split": split, "task": task.name, "class_names": card.class_names, "failed": len(failures)}

    out = Path(out_dir)
    files = [out / "metrics.json", out / "predictions.csv", out / "roc.png", out / "reliability.png"]
    atomic_write_text(files[0], json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(files[1], _predictions_csv(rows.rows, verdicts, errors, card.class_names, task))
    truth = task.one_hot(t, len(card.class_names))
    n_ok = f"(n={int(ok.sum())})"
    plot_roc(p, truth, card.class_names, files[2], title=f"ROC, {split or 'all'} {n_ok}")
    curves = [("uncalibrated (T = 1)", reliability(task, scaled_probs(task, logits[ok]), t))]
    if trust.temperature != 1.0:
        curves.append((f"temperature {trust.temperature:.3g}", reliability(task, p, t)))
    plot_reliability(curves, files[3], title=f"reliability, {split or 'all'} {n_ok}")
    if not task.multilabel:
        files.append(out / "confusion_matrix.png")
        cm = np.asarray(metrics["confusion_matrix"])
        plot_confusion(cm, card.class_names, files[-1], title=f"{split or 'all'} {n_ok}")
    return EvalResult(metrics, int(ok.sum()), failures, files)


#: logits, features, targets, errors, view verdicts, thumbnails
_Collected = tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str | None], np.ndarray]


@torch.inference_mode()
def _outputs(model: Any, batches: Any, runtime: Runtime) -> _Collected:
    """Logits, features, targets, errors, view verdicts and 8x8 thumbnails of ``(x, target, index, error)`` batches."""
    logits, features, targets, errors, views, thumbs = [], [], [], [], [], []
    for x, y, _, err in batches:
        views += view_verdicts(x.numpy())
        thumbs.append(thumbnails(x))
        with runtime.autocast():
            z, f = model.forward_features(runtime.inputs(x))
        logits.append(z.float().cpu())
        features.append(f.float().cpu())
        targets.append(y)
        errors.extend(err)
    arrays = (torch.cat(logits).numpy(), torch.cat(features).numpy(), torch.cat(targets).numpy())
    return *arrays, errors, views, np.concatenate(thumbs)


def _predictions_csv(
    rows: list[dict[str, str]], verdicts: list[Assessment], errors: list[str], class_names: list[str], task: Task
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "pred", *[f"p:{c}" for c in class_names], "ood_score", "flag", "error"])
    for row, v, err in zip(rows, verdicts, errors):
        if err:
            writer.writerow([row["path"], row.get("label", ""), "", *[""] * len(class_names), "", "", err])
        else:
            score = "" if v.ood_score is None else f"{v.ood_score:.4f}"
            probs = [f"{x:.6f}" for x in v.probs]
            decision = task.decide(v.probs, class_names)
            writer.writerow([row["path"], row.get("label", ""), decision, *probs, score, v.flag, ""])
    return buf.getvalue()
