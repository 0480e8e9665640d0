"""One film's DICOM results over STOW-RS: SR (+ SC) built from a local copy of the film, each object accounted for.

Shared by the ``--dicom-out dicomweb+…`` paths: the objects are written by
:func:`cxrtool.results.write_dicom_results` into a private temporary folder (gone when this returns) and
sent by :class:`~cxrtool.dicomweb.destination.StowDestination` (retries with backoff).  The film is read
where it lies (a local file, or the copy explain fetched): nothing here fetches.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtool.dicomweb.destination import StowDestination
from cxrtool.dicomweb.results import StoredResult, film_error, sent_result

if TYPE_CHECKING:
    from cxrtool.results.content import FilmPrediction, Heatmap, ModelInfo


def stow_film(
    name: str,
    film: Path,
    analyse: Callable[[], tuple[FilmPrediction, Heatmap | None]],
    info: ModelInfo,
    destination: StowDestination,
) -> StoredResult:
    """STOW the SR (and, with a heatmap, the SC) of ``film``, reported under ``name`` (a path or instance address).

    ``analyse`` makes the prediction and heatmap; it runs here so that a film it cannot decode is
    reported like one the server refused.  ``stored`` only when every object was acknowledged.
    """
    from cxrtool.results import write_dicom_results

    try:
        prediction, heatmap = analyse()
        with tempfile.TemporaryDirectory(prefix="cxrtool-results-") as folder:
            outcomes = destination.send(write_dicom_results(film, prediction, heatmap, folder, info))
    except Exception as exc:  # one bad film never stops the rest
        return film_error(name, exc)
    return sent_result(name, outcomes, "")
