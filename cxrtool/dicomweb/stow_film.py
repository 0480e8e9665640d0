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
from cxrtool.dicomweb.results import StoredResult
from cxrtool.errors import CxrError, ImageLoadError, one_line

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
    except ImageLoadError as exc:  # the film could not be read
        return StoredResult(name, "failed", reason=one_line(exc.reason))
    except CxrError as exc:  # e.g. a film without the UIDs a result must reference
        return StoredResult(name, "skipped", reason=one_line(exc))
    except Exception as exc:  # one bad film never stops the rest
        return StoredResult(name, "failed", reason=one_line(f"{type(exc).__name__}: {exc}"))
    failed = [o for o in outcomes if not o.stored]
    if failed:
        reasons = "; ".join(f"{'SC' if o.path.name.endswith('.sc.dcm') else 'SR'}: {o.reason}" for o in failed)
        return StoredResult(name, "failed", len(outcomes) - len(failed), reasons)
    return StoredResult(name, "stored", len(outcomes))
