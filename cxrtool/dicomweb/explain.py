"""``cxrtool explain`` over DICOMweb: the films of a study, series or QIDO query, and results STOWed back.

The listing is the predict source's (:class:`~cxrtool.dicomweb.source.DicomwebSource`: QIDO-RS in pages,
pulled as explain asks for its next batch).  Each instance is fetched once with WADO-RS into a private
temporary file; explain reads the pixels, writes its heatmaps and (``--dicom-out dicomweb+…``) the SR + SC
from that same copy, then the copy is removed.  Output files are named by SOP Instance UID, never by
anything from the header.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrtool.dicomweb.destination import StowDestination
from cxrtool.dicomweb.results import StoredResult
from cxrtool.dicomweb.source import DicomwebSource, fetched
from cxrtool.dicomweb.stow_film import stow_film

if TYPE_CHECKING:
    from cxrtool.modelfile.loaded import LoadedModel
    from cxrtool.trust.gate import HeaderVerdict


def explain_plan(source: DicomwebSource) -> Iterator[tuple[str, Path]]:
    """Lazily ``(instance address, output stem)`` for explain: the stem is the SOP Instance UID (no PHI)."""
    for name, sop in source.iter_jobs():
        yield name, Path(sop)


@dataclass
class FetchedFilms:
    """Explain's :class:`~cxrtool.explain.attribution.Films` for DICOMweb instances.

    ``open`` fetches the instance (WADO-RS, once) into a temporary file that lives as long as the context;
    ``header`` is the header gate's verdict from the attributes QIDO-RS listed (an instance address given
    directly was never listed: its fetched copy's header is read instead).
    """

    source: DicomwebSource

    def open(self, name: str) -> AbstractContextManager[Path]:
        return fetched(self.source.client, name)

    def header(self, name: str, film: Path) -> HeaderVerdict | None:
        from cxrtool.trust.gate import header_verdict

        listed = self.source.header_verdict(name)
        return listed if listed is not None else header_verdict(film)


@dataclass
class StowExplained:
    """``explain --dicom-out dicomweb+…``: an ``after_film`` hook that STOWs each film's SR + SC into its study.

    Built from explain's own rows and saved heatmap (:mod:`cxrtool.results.write`), while the film's local
    copy still exists; ``results`` holds one :class:`StoredResult` per film, in order.
    """

    destination: StowDestination
    model: LoadedModel
    composite: str
    results: list[StoredResult] = field(default_factory=list)

    def __call__(self, name: str, film: Path | None, rows: Sequence[Mapping[str, Any]]) -> None:
        from cxrtool.dicom import is_dicom
        from cxrtool.results.write import explain_model_info, explained_film, sc_row

        row, error = sc_row(rows)
        if film is None or row is None:
            result = StoredResult(name, "skipped", reason=f"explain failed: {error}")
        elif not is_dicom(film):
            result = StoredResult(name, "skipped", reason="not a DICOM file: no DICOM result")
        else:
            card, info = self.model.card, explain_model_info(self.model, self.composite)
            result = stow_film(
                name, film, lambda: explained_film(film, row, card, self.composite), info, self.destination
            )
        self.results.append(result)
