"""``--dicom-out dicomweb+…``: the SR (+ heatmap SC) of every predicted film, STOWed into the film's own study.

A view of the rows the run already wrote, like the folder output (:mod:`cxrtool.results`): the SR
carries each row's probabilities, the SC the heatmap of its top class, both built by
:func:`cxrtool.results.write_dicom_results` in a private temporary folder and sent by
:class:`~cxrtool.dicomweb.destination.StowDestination`.  Films are handled one at a time (a film
read over DICOMweb is fetched again; a local DICOM file is read in place), so memory stays flat.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtool.dicomweb.connection import make_client
from cxrtool.dicomweb.destination import StowDestination
from cxrtool.dicomweb.source import fetched
from cxrtool.dicomweb.urls import is_dicomweb_url, parse_dicomweb_url
from cxrtool.errors import CxrError, ImageLoadError, one_line

if TYPE_CHECKING:
    from cxrtool.modelfile.loaded import LoadedModel


@dataclass(frozen=True)
class StoredResult:
    """One predictions row: ``stored`` (every object acknowledged), ``failed`` or ``skipped``, with the reason."""

    path: str
    status: str
    objects: int = 0
    reason: str = ""


def store_results(
    predictions: str | Path,
    destination: StowDestination,
    *,
    model: LoadedModel,
    composite: str | None = None,
    on_film: Callable[[StoredResult], None] | None = None,
) -> list[StoredResult]:
    """STOW an SR (and, for a checkpoint, an SC) per DICOM row of ``predictions``: views of the run's rows.

    ``model`` is the run's loaded model (never opened again here).  A row names a DICOMweb instance (fetched with the
    destination's connection settings) or a local file (non-DICOM files are skipped with the reason).
    """
    from cxrtool.report.inputs import read_predictions
    from cxrtool.results import FilmPrediction, ModelInfo
    from cxrtool.results.heatmap import HeatmapMaker

    rows, _ = read_predictions(predictions)
    maker = HeatmapMaker(model, composite) if model.is_checkpoint else None
    card = model.card
    names = list(card.class_names)
    calibrated = "temperature" in card.calibration
    clients: dict[str, object] = {}
    results = []
    for row in rows:
        if row.error:
            result = StoredResult(row.path, "skipped", reason=f"prediction failed: {row.error}")
        else:
            prediction = FilmPrediction.from_row(
                {"probabilities": row.probs, "predicted": row.predicted, "ood_score": row.ood_score, "flag": row.flag},
                names,
            )
            info = ModelInfo(model_id=row.model_id, backend=row.backend, calibrated=calibrated)
            result = _one(row.path, prediction, info, maker, destination, clients)
        if on_film is not None:
            on_film(result)
        results.append(result)
    return results


def _one(path: str, prediction, info, maker, destination: StowDestination, clients: dict) -> StoredResult:
    from cxrtool.dicom import is_dicom
    from cxrtool.results import write_dicom_results

    try:
        with ExitStack() as stack:
            if is_dicomweb_url(path):
                root = parse_dicomweb_url(path)
                if root.root not in clients:
                    clients[root.root] = make_client(root, destination.options, destination.credentials)
                film = stack.enter_context(fetched(clients[root.root], path))
            elif is_dicom(path):
                film = Path(path)
            else:
                return StoredResult(path, "skipped", reason="not a DICOM file: no DICOM result")
            heatmap = maker.make(film, prediction.top[0]) if maker else None
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="cxrtool-results-"))
            files = write_dicom_results(film, prediction, heatmap, folder, info)
            outcomes = destination.send(files)
    except ImageLoadError as exc:  # the film could not be fetched or read
        return StoredResult(path, "failed", reason=one_line(exc.reason))
    except CxrError as exc:  # e.g. a film without the UIDs a result must reference
        return StoredResult(path, "skipped", reason=one_line(exc))
    except Exception as exc:  # one bad film never stops the rest
        return StoredResult(path, "failed", reason=one_line(f"{type(exc).__name__}: {exc}"))
    failed = [o for o in outcomes if not o.stored]
    if failed:
        reasons = "; ".join(f"{'SC' if o.path.name.endswith('.sc.dcm') else 'SR'}: {o.reason}" for o in failed)
        return StoredResult(path, "failed", len(outcomes) - len(failed), reasons)
    note = "" if maker else "no SC: heatmaps need a .safetensors checkpoint"
    return StoredResult(path, "stored", len(outcomes), note)


def summary_line(results: list[StoredResult], destination: StowDestination) -> str:
    """One line for the CLI: counts by status and where they went (failures are listed by the caller)."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no inputs"
    return f"DICOM results -> {destination} (STOW-RS): {parts}"
