"""Writing DICOM results: one film -> SR (+ SC), and the post-passes ``predict``/``explain`` run.

A result is a view of what the run computed: ``predict``'s rows (the calibrated probabilities,
``ood_score`` and flag it wrote) and ``explain``'s rows and saved heatmaps; nothing is predicted
twice.  The model is the run's :class:`~cxrtool.modelfile.loaded.LoadedModel`, never reopened.
Every object is written atomically under a stable name (:mod:`cxrtool.results.layout`), so a rerun
skips the films already done and a crash never leaves half a file.  ``dicom_results.csv`` in the
output folder lists every input with what was written or why nothing was (non-DICOM input, no
heatmap for a non-checkpoint model, unreadable film...).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrtool.errors import CxrError, one_line
from cxrtool.fsutil import NAME_ERRORS, atomic_open, atomic_path, open_names
from cxrtool.results.content import FilmPrediction, Heatmap, ModelInfo

if TYPE_CHECKING:
    from cxrtool.modelfile import ModelCard
    from cxrtool.modelfile.loaded import LoadedModel

INDEX_NAME = "dicom_results.csv"
INDEX_COLUMNS = ("path", "status", "sr", "sc", "reason")


@dataclass
class DicomResult:
    """One input's row in ``dicom_results.csv``: ``written``, ``exists`` (rerun), ``skipped`` (not a DICOM, no
    prediction) or ``failed`` (a DICOM film no result could be made for), with a reason."""

    path: str
    status: str
    sr: str = ""
    sc: str = ""
    reason: str = ""


def write_dicom_results(
    source_path: str | Path,
    prediction: FilmPrediction,
    heatmap: Heatmap | None,
    out_dir: str | Path,
    model_info: ModelInfo,
    *,
    overwrite: bool = False,
    content_key: str = "",
) -> list[Path]:
    """Write the SR (and, with a heatmap, the SC) for one DICOM film; return the result files.

    Files that already exist are kept (reruns are resumable) unless ``overwrite``.  The source is
    only read.  ``content_key`` (``listen``: a hash of the received film) enters the result UIDs
    and names (:mod:`cxrtool.results.layout`).

    Raises
    ------
    CxrError
        The input is not DICOM, or lacks the UIDs a result must reference.
    """
    from cxrtool.dicom import is_dicom
    from cxrtool.dicom.read import read_dataset
    from cxrtool.results.layout import result_ids, result_paths
    from cxrtool.results.sc import build_sc, render_picture
    from cxrtool.results.sr import build_sr
    from cxrtool.results.study import study_reference

    if not is_dicom(source_path):
        raise CxrError("not a DICOM file: results go back to a DICOM study only")
    source = read_dataset(source_path, stop_before_pixels=True)
    study_reference(source)  # raises the one-line reason when the film cannot be referenced
    paths = result_paths(out_dir, source_path, source, model_info.model_id, content_key)
    if overwrite or not paths["sr"].exists():
        _save(
            build_sr(source, prediction, model_info, result_ids(source, model_info.model_id, "sr", content_key)),
            paths["sr"],
        )
    written = [paths["sr"]]
    if heatmap is not None:
        if overwrite or not paths["sc"].exists():
            picture = render_picture(prediction, model_info, heatmap)
            _save(build_sc(source, picture, result_ids(source, model_info.model_id, "sc", content_key)), paths["sc"])
        written.append(paths["sc"])
    return written


def _save(ds, path: Path) -> None:
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


# ---------------------------------------------------------------- post-passes over a run's inputs


def results_for_predictions(
    predictions: str | Path,
    out_dir: str | Path,
    *,
    model: LoadedModel | None,
    composite: str | None = None,
    on_file: Callable[[DicomResult], None] | None = None,
) -> list[DicomResult]:
    """``predict --dicom-out``: an SR per DICOM row of a predictions file, an SC when the model is a checkpoint.

    The SR carries the row's own probabilities (the backend that ran, calibrated as the run wrote
    them, any ``ood_score``/``flag``); the heatmap explains the row's predicted (top) class.
    ``model`` is the run's loaded model (None: classes from the rows, no heatmaps).
    """
    maker, no_heatmap = _heatmap_maker(model, composite)
    card = model.card if model is not None else None
    results = []
    for row in read_rows(Path(predictions)):
        names = list(card.class_names) if card else _row_classes(row)
        model_id, backend = str(row.get("model_id") or ""), str(row.get("backend") or "")
        info = ModelInfo.of(card, model_id, backend) if card else ModelInfo(model_id, backend)

        def analyse(path: str, row: dict = row, names: list[str] = names) -> tuple[FilmPrediction, Heatmap | None]:
            prediction = FilmPrediction.from_row(row, names)
            return prediction, maker.make(path, prediction.top[0]) if maker else None

        results.append(_one(row["path"], out_dir, info, row.get("error"), analyse, no_heatmap, on_file))
    write_index(out_dir, results)
    return results


def results_for_explain(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    model: LoadedModel,
    composite: str,
    on_file: Callable[[DicomResult], None] | None = None,
) -> list[DicomResult]:
    """``explain --dicom-out``: SR + SC per DICOM input from explain's own rows and heatmaps.

    ``rows`` are :func:`cxrtool.explain.attribution.explain_files`' report rows (one per film and
    target, each with the film's calibrated ``probabilities``).  The SR carries those probabilities
    and the film's ``ood_score``/``flag``; the SC shows the heatmap explain saved for the predicted
    class (or, when explain was asked for another class, its first target's).
    """
    info = explain_model_info(model, composite)
    by_path: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_path.setdefault(str(row["path"]), []).append(row)
    results = []
    for path, film_rows in by_path.items():
        row, error = sc_row(film_rows)

        def analyse(path: str, row: Mapping[str, Any] = row or {}) -> tuple[FilmPrediction, Heatmap]:
            return explained_film(path, row, model.card, composite)  # never called for a film explain could not read

        results.append(_one(path, out_dir, info, error, analyse, "", on_file))
    write_index(out_dir, results)
    return results


def explain_model_info(model: LoadedModel, composite: str) -> ModelInfo:
    """What an explain result says about its algorithm: the model, torch, calibration, composite, data warning."""
    return ModelInfo.of(model.card, model.model_id, "torch", composite=composite)


def sc_row(film_rows: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any] | None, str | None]:
    """``(row, None)``: the explain row of one film whose heatmap goes in the SC (its predicted class, else its
    first target's); ``(None, reason)`` when explain could not make one for this film."""
    ok = [r for r in film_rows if not r.get("error")]
    if not ok:
        return None, str((film_rows[0].get("error") if film_rows else None) or "no heatmap")
    return next((r for r in ok if r.get("target") == r.get("predicted")), ok[0]), None


def explained_film(
    film: str | Path, row: Mapping[str, Any], card: ModelCard, composite: str
) -> tuple[FilmPrediction, Heatmap]:
    """An explain row -> the film's prediction and the heatmap explain saved for it (``film`` is decoded for the SC:
    the local file, or the copy of a DICOMweb instance explain fetched)."""
    import numpy as np

    from cxrtool.images import load_image

    names = list(card.class_names)
    probs = [float(p) for p in row["probabilities"]]
    score = row.get("ood_score")
    prediction = FilmPrediction.from_probs(
        probs, names, card.task.decide(np.asarray(probs), names), ood_score=score, flag=row.get("flag") or None
    )
    image = load_image(film, window=card.preprocess.window)
    relevance = np.load(row["heatmap"]).astype(np.float32)  # the map explain saved: never recomputed
    heatmap = Heatmap(image, relevance, card.preprocess.resize, str(row["target"]), composite)
    return prediction, heatmap


def _one(path: str, out_dir, info: ModelInfo, error, analyse, no_heatmap: str, on_file) -> DicomResult:
    """One input: skip with a reason, keep what a previous run wrote, or analyse and write."""
    from cxrtool.dicom import is_dicom

    if error:
        result = DicomResult(path, "skipped", reason=f"prediction failed: {error}")
    elif not is_dicom(path):
        result = DicomResult(path, "skipped", reason="not a DICOM file: no DICOM result")
    else:
        try:
            done = _existing(out_dir, path, info)
            wanted = ("sr",) if no_heatmap else ("sr", "sc")
            if all(kind in done for kind in wanted):  # a rerun: nothing to compute
                result = DicomResult(path, "exists", str(done["sr"]), str(done.get("sc", "")), reason=no_heatmap)
            else:
                prediction, heatmap = analyse(path)
                files = write_dicom_results(path, prediction, heatmap, out_dir, info)
                sc = str(files[1]) if len(files) > 1 else ""
                result = DicomResult(path, "written", str(files[0]), sc, reason="" if sc else no_heatmap)
        except CxrError as exc:  # a header no result can be made from (no Study UID, an unknown SOP class...)
            result = DicomResult(path, "failed", reason=one_line(exc))
        except Exception as exc:  # one bad film never stops the rest
            result = DicomResult(path, "failed", reason=one_line(f"{type(exc).__name__}: {exc}"))
    if on_file is not None:
        on_file(result)
    return result


def _existing(out_dir, path: str, info: ModelInfo) -> dict[str, Path]:
    """``{kind: path}`` of the objects a previous run already wrote for this film and model."""
    from cxrtool.dicom.read import read_dataset
    from cxrtool.results.layout import result_paths

    paths = result_paths(out_dir, path, read_dataset(path, stop_before_pixels=True), info.model_id)
    return {kind: p for kind, p in paths.items() if p.exists()}


def _heatmap_maker(model: LoadedModel | None, composite: str | None):
    from cxrtool.results.heatmap import HeatmapMaker

    if model is None or not model.is_checkpoint:
        return None, "no SC: heatmaps need a .safetensors checkpoint"
    return HeatmapMaker(model, composite), ""


def _row_classes(row: dict) -> list[str]:
    probs = row.get("probabilities")
    if isinstance(probs, dict):
        return list(probs)
    return [k[2:] for k in row if k.startswith("p:")]


def read_rows(path: Path) -> Iterable[dict]:
    """A predictions file's rows one at a time (``.csv`` or ``.jsonl``), as ``FilmPrediction.from_row`` reads them."""
    if path.suffix.lower() == ".jsonl":
        with open_names(path) as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)
    else:
        with open_names(path) as fh:
            yield from csv.DictReader(fh)


def write_index(out_dir: str | Path, results: Sequence[DicomResult]) -> Path:
    """Merge ``results`` into ``dicom_results.csv`` (one row per input path, newest wins), atomically."""
    index = Path(out_dir) / INDEX_NAME
    rows: dict[str, dict] = {}
    if index.exists():
        with open_names(index) as fh:
            rows = {r["path"]: r for r in csv.DictReader(fh)}
    for r in results:
        rows[r.path] = {"path": r.path, "status": r.status, "sr": r.sr, "sc": r.sc, "reason": r.reason}
    with atomic_open(index, "w", newline="", encoding="utf-8", errors=NAME_ERRORS) as fh:
        writer = csv.DictWriter(fh, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(rows.values())
    return index


def failed_count(results: Sequence[DicomResult]) -> int:
    """DICOM films that got no result: each one makes ``predict``/``explain --dicom-out`` exit 1."""
    return sum(r.status == "failed" for r in results)


def summary_line(results: Sequence[DicomResult], out_dir: str | Path) -> str:
    """One line for the CLI: counts by status, and where the index is."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no inputs"
    return f"DICOM results -> {out_dir}: {parts} (reasons in {Path(out_dir) / INDEX_NAME})"
