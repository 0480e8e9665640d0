"""``--dicom-out dicomweb+…``: each film's SR (+ heatmap SC) STOWed into its own study while the run goes.

A view of the run's rows, like the folder output (:mod:`cxrtool.results`).  :class:`ResultStower` is
predict's row sink: once a batch of rows is on disk it builds, per row, the SR from that row's own
record (probabilities, ``ood_score``, flag: the values just written, never read back) and the SC from
the heatmap of its predicted class, out of the film the run already holds: a local DICOM file in place,
or the copy of a DICOMweb instance that the decode worker kept in the run's private folder
(:func:`~cxrtool.dicomweb.source.kept_path`), deleted as soon as its results are stored.  So no film is
fetched twice, and the folder holds only the films in flight.

Exactly once, as the archive sees it: each film's outcome is appended (and fsync'd) to a journal beside
the predictions (``preds.csv.stow.csv``) after the server answered.  A crash between a row and its
acknowledgement leaves a row without a ``stored`` line, and ``--resume`` stores those first, from the
row as recorded (their film fetched once more: the only second fetch).  Result UIDs are stable
(:mod:`cxrtool.results.layout`), so storing again what the server acknowledged just before a crash
replaces and never duplicates.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cxrtool.dicomweb.connection import make_client
from cxrtool.dicomweb.destination import SendOutcome, StowDestination
from cxrtool.dicomweb.source import fetch_to, kept_path
from cxrtool.dicomweb.urls import is_dicomweb_url, parse_dicomweb_url
from cxrtool.errors import CxrError, ImageLoadError, one_line
from cxrtool.fsutil import open_names

if TYPE_CHECKING:
    from cxrtool.infer.rows import Prediction, RowFormat
    from cxrtool.modelfile.loaded import LoadedModel
    from cxrtool.results.content import FilmPrediction, ModelInfo

#: the journal beside ``preds.csv``: ``preds.csv.stow.csv``
JOURNAL_SUFFIX = ".stow.csv"
JOURNAL_COLUMNS = ("path", "destination", "status", "objects", "reason")
#: outcomes a rerun would not change: ``--resume`` never stores these films again
SETTLED = frozenset({"stored", "skipped"})
#: objects per STOW-RS request, in bytes on disk (a film's SR and SC are never split)
REQUEST_BYTES = 16 * 2**20
NO_SC = "no SC: heatmaps need a .safetensors checkpoint"


@dataclass(frozen=True)
class StoredResult:
    """One predictions row: ``stored`` (every object acknowledged), ``failed`` or ``skipped``, with the reason."""

    path: str
    status: str
    objects: int = 0
    reason: str = ""


def journal_path(predictions: str | Path) -> Path:
    """Where the STOW journal of a predictions file lives: beside it, named after it."""
    predictions = Path(predictions)
    return predictions.with_name(predictions.name + JOURNAL_SUFFIX)


class StowJournal:
    """What became of each row's results at a destination: appended and fsync'd after every answer, read on resume.

    One line per film and attempt; a film counts as settled at a destination once a line says ``stored``
    (or ``skipped``: no result can be made from it).
    """

    def __init__(self, path: Path, destination: str):
        self.path, self.destination = path, destination
        self.fh: IO[str] | None = None

    def settled(self) -> set[str]:
        """Rows whose results are at this destination (or never can be); a torn last line counts for nothing."""
        if not self.path.exists():
            return set()
        with open_names(self.path) as fh:
            return {
                r["path"]
                for r in csv.DictReader(fh)
                if r.get("destination") == self.destination and r.get("status") in SETTLED
            }

    def open(self, *, fresh: bool) -> None:
        """Start a new journal (a fresh or overwritten output) or continue the one there (resume)."""
        import os

        torn = not fresh and self.path.exists() and self.path.stat().st_size > 0 and not _ends_with_newline(self.path)
        self.fh = open_names(self.path, "w" if fresh else "a")
        if fresh or self.fh.tell() == 0:
            csv.writer(self.fh, lineterminator="\n").writerow(JOURNAL_COLUMNS)
        elif torn:  # a crash mid-line: the next line starts on its own
            self.fh.write("\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def record(self, results: Iterable[StoredResult]) -> None:
        import os

        assert self.fh is not None, "journal not opened"
        writer = csv.writer(self.fh, lineterminator="\n")
        writer.writerows((r.path, self.destination, r.status, r.objects, r.reason) for r in results)
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, 2)
        return fh.read(1) == b"\n"


@dataclass(frozen=True)
class _Film:
    """One row to store: its name (path or instance address), what it says, and the film to build from."""

    name: str
    prediction: FilmPrediction
    info: ModelInfo
    source: Path


class ResultStower:
    """``predict --dicom-out dicomweb+…``: predict's ``on_start`` / ``on_rows`` sink, as a context manager.

    The context owns the run's private folder (:attr:`folder`, mode 0700): the decode workers keep fetched
    instances there (:meth:`~cxrtool.dicomweb.source.DicomwebSource.keeping_decoder`) and the SR/SC are built
    there; it is removed when the context ends, however it ends.  :attr:`counts` and :attr:`failures` are
    what the CLI reports; ``on_film`` sees every film's outcome as it is journaled.
    """

    def __init__(
        self,
        destination: StowDestination,
        model: LoadedModel,
        predictions: str | Path,
        *,
        resume: bool = False,
        composite: str | None = None,
        on_film: Callable[[StoredResult], None] | None = None,
    ):
        from cxrtool.results.heatmap import HeatmapMaker

        self.destination, self.model, self.predictions = destination, model, Path(predictions)
        self.resume, self.on_film = resume, on_film
        self.maker = HeatmapMaker(model, composite) if model.is_checkpoint else None
        self.journal = StowJournal(journal_path(predictions), str(destination))
        self.counts: Counter = Counter()
        self.failures: list[StoredResult] = []
        self.folder: Path | None = None
        self._fmt: RowFormat | None = None
        self._clients: dict[str, Any] = {}

    def __enter__(self) -> ResultStower:
        self.folder = Path(tempfile.mkdtemp(prefix="cxrtool-run-"))  # 0700: films and results of this run only
        return self

    def __exit__(self, *exc: object) -> None:
        self.journal.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    # ------------------------------------------------------------------ predict's hooks

    def start(self, fmt: RowFormat) -> None:
        """``on_start``: open the journal; resuming, first store what earlier runs recorded but never had stored."""
        self._fmt = fmt
        self.journal.open(fresh=not self.resume)
        if self.resume:
            self.store_recorded()

    def __call__(self, rows: list[Prediction]) -> None:
        """``on_rows``: STOW the results of the batch just written; then its films' kept copies are deleted."""
        assert self._fmt is not None and self.folder is not None, "start() runs first, inside the context"
        results: dict[str, StoredResult] = {}
        films: list[_Film] = []
        try:
            for row in rows:
                if row.error is not None:
                    results[row.path] = StoredResult(row.path, "skipped", reason=f"prediction failed: {row.error}")
                    continue
                record = self._fmt.record(row)  # exactly what the row says in the file, before any rounding
                try:
                    films.append(self._film(row.path, record, self._source(row.path)))
                except Exception as exc:
                    results[row.path] = film_error(row.path, exc)
            for film, result in zip(films, self._store(films)):
                results[film.name] = result
        finally:
            for row in rows:
                self._forget(row.path)
        self._done(results[row.path] for row in rows)

    # ------------------------------------------------------------------ rows recorded by earlier runs

    def store_recorded(self) -> None:
        """Store the results of every row of the predictions file that the journal has not settled, one at a time.

        These are rows an earlier run wrote but never had acknowledged (it crashed, or the server refused);
        their values are the row as recorded, and a DICOMweb film is fetched again into the run's folder (its
        copy went with that run) and deleted once stored.
        """
        from cxrtool.results.write import read_rows

        if not self.predictions.exists():  # --resume of an output that was never started
            return
        settled = self.journal.settled()
        for row in read_rows(self.predictions):
            name = str(row.get("path") or "")
            if name in settled:
                continue
            if row.get("error"):
                self._done([StoredResult(name, "skipped", reason=f"prediction failed: {row['error']}")])
                continue
            try:
                result = self._store([self._film(name, row, self._source(name))])[0]
            except Exception as exc:
                result = film_error(name, exc)
            finally:
                self._forget(name)
            self._done([result])

    # ------------------------------------------------------------------ one batch of films

    def _source(self, name: str) -> Path:
        """The film a row names, as this run holds it: the kept copy of a DICOMweb instance, or the file in place.

        Raises
        ------
        CxrError
            A local file that is not DICOM (no study to store into).
        """
        if is_dicomweb_url(name):
            assert self.folder is not None
            kept = kept_path(self.folder, name)
            return kept if kept.exists() else fetch_to(self._client(name), name, kept)  # lost copy: fetched again
        from cxrtool.dicom import is_dicom

        if not is_dicom(name):
            raise CxrError("not a DICOM file: no DICOM result")
        return Path(name)

    def _forget(self, name: str) -> None:
        """Delete the run's copy of a DICOMweb film once its results are stored (or cannot be)."""
        if self.folder is not None and is_dicomweb_url(name):
            kept_path(self.folder, name).unlink(missing_ok=True)

    def _film(self, name: str, record: dict, source: Path) -> _Film:
        """A predictions row (as written, or as read back) -> what its SR says and which model said it."""
        from cxrtool.results import FilmPrediction, ModelInfo

        card = self.model.card
        info = ModelInfo.of(
            card,
            str(record.get("model_id") or self.model.model_id),
            str(record.get("backend") or ""),
            composite=self.maker.composite if self.maker else None,
        )
        return _Film(name, FilmPrediction.from_row(record, list(card.class_names)), info, source)

    def _store(self, films: list[_Film]) -> list[StoredResult]:
        """Build every film's SR (+ SC) and STOW them together; one result per film, in order."""
        from cxrtool.results import write_dicom_results

        if not films:
            return []
        built: dict[str, list[Path]] = {}
        results: dict[str, StoredResult] = {}
        with tempfile.TemporaryDirectory(prefix="results-", dir=self.folder) as folder:
            for i, film in enumerate(films):
                try:
                    heatmap = self.maker.make(film.source, film.prediction.top[0]) if self.maker else None
                    built[film.name] = write_dicom_results(
                        film.source, film.prediction, heatmap, Path(folder, str(i)), film.info
                    )
                except Exception as exc:
                    results[film.name] = film_error(film.name, exc)
            for chunk in _requests(built):
                try:
                    outcomes = iter(self.destination.send([f for name in chunk for f in built[name]]))
                    note = "" if self.maker else NO_SC
                    for name in chunk:
                        results[name] = sent_result(name, [next(outcomes) for _ in built[name]], note)
                except Exception as exc:  # a sender bug: the films of this request are reported, the run goes on
                    results.update((name, film_error(name, exc)) for name in chunk)
        return [results[film.name] for film in films]

    def _done(self, results: Iterable[StoredResult]) -> None:
        results = list(results)
        self.journal.record(results)
        for r in results:
            self.counts[r.status] += 1
            if r.status == "failed":
                self.failures.append(r)
            if self.on_film is not None:
                self.on_film(r)

    def _client(self, name: str):
        """One client per service root, with the destination's connection settings."""
        root = parse_dicomweb_url(name)
        if root.root not in self._clients:
            self._clients[root.root] = make_client(root, self.destination.options, self.destination.credentials)
        return self._clients[root.root]


def _requests(built: dict[str, list[Path]]) -> Iterator[list[str]]:
    """Films grouped into STOW requests of at most :data:`REQUEST_BYTES` (a film's objects always together):
    a request's objects are all in memory while it is sent, so memory stays flat whatever the batch size."""
    chunk: list[str] = []
    size = 0
    for name, files in built.items():
        film_size = sum(f.stat().st_size for f in files)
        if chunk and size + film_size > REQUEST_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(name)
        size += film_size
    if chunk:
        yield chunk


def sent_result(name: str, outcomes: list[SendOutcome], note: str) -> StoredResult:
    """A film's objects' outcomes -> ``stored`` only when the server acknowledged every one."""
    failed = [o for o in outcomes if not o.stored]
    if failed:
        reasons = "; ".join(f"{'SC' if o.path.name.endswith('.sc.dcm') else 'SR'}: {o.reason}" for o in failed)
        return StoredResult(name, "failed", len(outcomes) - len(failed), reasons)
    return StoredResult(name, "stored", len(outcomes), note)


def film_error(name: str, exc: Exception) -> StoredResult:
    """Why no result could be built for a film: ``skipped`` when none can be (not DICOM, no UIDs), else ``failed``."""
    if isinstance(exc, ImageLoadError):  # the film could not be fetched or read
        return StoredResult(name, "failed", reason=one_line(exc.reason))
    if isinstance(exc, CxrError):  # e.g. not DICOM, or a film without the UIDs a result must reference
        return StoredResult(name, "skipped", reason=one_line(exc))
    return StoredResult(name, "failed", reason=one_line(f"{type(exc).__name__}: {exc}"))  # one film, not the run


def store_results(
    predictions: str | Path,
    destination: StowDestination,
    *,
    model: LoadedModel,
    composite: str | None = None,
) -> list[StoredResult]:
    """STOW the SR (+ SC) of every row of ``predictions`` that its journal has not settled at ``destination``.

    What ``predict --resume --dicom-out dicomweb+…`` does first, as a function of its own: each DICOMweb film
    is fetched (once) and each local DICOM file read in place, one film at a time.  ``model`` is the run's
    loaded model (never opened again here).
    """
    results: list[StoredResult] = []
    with ResultStower(destination, model, predictions, resume=True, composite=composite, on_film=results.append) as s:
        s.journal.open(fresh=False)
        s.store_recorded()
    return results


def summary_line(counts: Counter, destination: StowDestination) -> str:
    """One line for the CLI: films by outcome and where they went (failures are listed by the caller)."""
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing to store"
    return f"DICOM results -> {destination} (STOW-RS): {parts}"
