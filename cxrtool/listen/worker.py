"""The listen worker: one spooled film at a time through predict's and explain's own core.

The film's row comes from predict's :func:`~cxrtool.infer.batching.iter_predictions` with the one
backend loaded at start, and is appended to ``predictions.csv`` by predict's own writer (same
columns, trust included); the heatmap is explain's :class:`~cxrtool.results.heatmap.HeatmapMaker`;
the objects come from :func:`cxrtool.results.write_dicom_results`, keyed by the film's content.
No model code runs in the network handlers.

A failure is either *transient* (disk full, quota, I/O error, the output locked by another run): the
film stays spooled and is retried with backoff (1 s doubling to ``max_retry``), other films go
on meanwhile; or *permanent* (the film cannot be decoded or referenced): it goes to ``failed/``
with a reason file.  Nothing acknowledged is ever dropped for a cause outside the film.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtool.errors import one_line
from cxrtool.listen.logs import redact
from cxrtool.listen.outbox import Outbox
from cxrtool.listen.spool import Spool, content_key
from cxrtool.locks import OutputBusy, owned_output

if TYPE_CHECKING:
    from cxrtool.infer.rows import Prediction

LOG = logging.getLogger("cxrtool.listen")

#: errors of the machine, not of the film: the film waits in the spool and is tried again
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EIO,
        errno.EROFS,
        errno.EAGAIN,
        errno.EBUSY,
        errno.ENOMEM,
        errno.EMFILE,
        errno.ENFILE,
        errno.ESTALE,
        errno.ETIMEDOUT,
        errno.EACCES,
        errno.EPERM,
    }
)


def is_transient(exc: BaseException | None) -> bool:
    """Whether a failure may go away by itself (or by an admin freeing space): retry, never ``failed/``.

    The exceptions it was raised from count too (a lock file that cannot be written on a full disk
    surfaces as a one-line :class:`~cxrtool.errors.CxrError` raised while handling the ``OSError``).
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OutputBusy) or (isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


class FilmError(Exception):
    """The film itself cannot be analysed (its prediction row's error): permanent."""


class Worker:
    """Processes the spool until stopped; the film in progress is always finished first."""

    def __init__(
        self,
        model: str | Path,
        out: str | Path,
        spool: Spool,
        outbox: Outbox | None,
        *,
        backend: str = "auto",
        device: str = "cpu",
        composite: str | None = None,
        first_retry: float = 1.0,
        max_retry: float = 300.0,
    ):
        from cxrtool.config import resolve_preprocess
        from cxrtool.infer.rows import RowFormat
        from cxrtool.infer.writers import CsvWriter, drop_torn_tail
        from cxrtool.trust import load_trust

        self.out = Path(out)
        self.spool = spool
        self.outbox = outbox
        self.results = self.out / "results"
        self._load(model, backend, device, composite)
        card = self.engine.card
        described = self.engine.describe()
        meta = {"model_id": self.model.model_id, "backend": described["backend"], "device": described["device"]}
        self.model_id, self.backend_name = meta["model_id"], meta["backend"]
        self.cfg = resolve_preprocess(card.preprocess, {})
        self.trust = load_trust(self.model)
        self.format = RowFormat(list(card.class_names), card.task, meta)
        self.predictions = self.out / "predictions.csv"
        self.writer = CsvWriter(self.predictions, self.format)
        self._recorded: set[str] = set()
        if self.predictions.exists():  # once, at start: checks model + columns, and rows a killed run wrote
            drop_torn_tail(self.predictions)
            self._recorded = self.writer.recorded_paths()
        self.first_retry, self.max_retry = first_retry, max_retry
        self._retry: dict[str, tuple[float, float]] = {}  # spool name -> (monotonic time of next try, delay)
        self.processed = 0
        self.failed = 0
        self.retries = 0
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _load(self, model: str | Path, backend: str, device: str, composite: str | None) -> None:
        """The one loaded model, backend and heatmap maker kept for the worker's lifetime."""
        from cxrtool.devices import resolve_device
        from cxrtool.infer.loading import load_backend
        from cxrtool.modelfile.loaded import open_model
        from cxrtool.results.heatmap import HeatmapMaker

        self.model = open_model(model)  # the file is read and hashed once per listen lifetime
        self.engine = load_backend(self.model, backend=backend, device=device)
        if self.model.is_checkpoint:  # LRP on the GPU when there is one (the same relevance, tested under `gpu`)
            self.maker = HeatmapMaker(self.model, composite, device=str(resolve_device("auto")))
        else:
            self.maker = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="cxrtool-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end after the current film, and wait for it."""
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        while not self._stop.is_set():
            film, wait = self._next()
            if film is None:
                self.wake.wait(wait)
                self.wake.clear()
                continue
            try:
                self.process(film)
            except Exception as exc:  # the loop itself must outlive anything a film or the disk does
                LOG.error("worker: %s", one_line(f"{type(exc).__name__}: {exc}"))
                self._stop.wait(1.0)

    def _next(self) -> tuple[Path | None, float]:
        """The oldest film not waiting for a retry, or how long until one is due (at most 0.5 s)."""
        now = time.monotonic()
        due = 0.5
        for path in self.spool.pending():
            at = self._retry.get(path.name, (0.0, 0.0))[0]
            if at <= now:
                return path, 0.0
            due = min(due, at - now)
        return None, due

    def process(self, path: Path) -> list[Path]:
        """One film: row, SR (+ SC), outbox.

        Transient failures leave it spooled (retried later); permanent ones move it to ``failed/``.
        """
        LOG.info("film %s: processing", path.name)
        if self._is_own_result(path):
            LOG.info("film %s: a cxrtool result sent back to us; not analysed", path.name)
            self.spool.done(path)
            return []
        try:
            files = self._analyse(path)
            if self.outbox is not None:
                self.outbox.add(files)
        except Exception as exc:
            if is_transient(exc):
                self._later(path, exc)
                return []
            reason = redact(one_line(exc) if isinstance(exc, FilmError) else one_line(f"{type(exc).__name__}: {exc}"))
            try:
                kept = self.spool.fail(path, reason)
            except OSError as move_error:  # even failed/ cannot be written (a full disk): keep it spooled
                self._later(path, move_error)
                return []
            self.failed += 1
            self._retry.pop(path.name, None)
            LOG.error("film %s failed: %s (kept in %s)", path.name, reason, kept.parent)
            return []
        self._retry.pop(path.name, None)
        self.spool.done(path)
        self.processed += 1
        LOG.info("film %s: -> %d result object(s)", path.name, len(files))
        return files

    def _later(self, path: Path, exc: BaseException) -> None:
        delay = min(self._retry.get(path.name, (0.0, self.first_retry / 2))[1] * 2, self.max_retry)
        self._retry[path.name] = (time.monotonic() + delay, delay)
        self.retries += 1
        LOG.warning("film %s: %s; kept in the spool, retrying in %.0f s", path.name, redact(one_line(exc)), delay)

    def _analyse(self, path: Path) -> list[Path]:
        """The film's results: found when this content was already analysed, else predicted and written."""
        from cxrtool.results import FilmPrediction, ModelInfo, write_dicom_results

        key = content_key(path.read_bytes())
        done = self._existing_results(path, key)
        if done:
            LOG.info("film %s: this content was already analysed; its results are kept", path.name)
            return done
        row = self._predict(path)
        if str(path) not in self._recorded:  # a film retried after its row was written gets no second row
            self._append(row)
        if row.error:
            raise FilmError(row.error)
        prediction = FilmPrediction.from_row(self.format.flat(self.format.record(row)), self.format.class_names)
        heatmap = self.maker.make(path, prediction.top[0]) if self.maker else None
        info = ModelInfo.of(
            self.engine.card, self.model_id, self.backend_name, composite=self.maker.composite if heatmap else None
        )
        files = write_dicom_results(path, prediction, heatmap, self.results, info, content_key=key)
        self._drop_superseded(path, files)
        return files

    def _predict(self, path: Path) -> Prediction:
        """The film's row, from predict's own batching with the loaded backend (no file is re-read for it)."""
        from cxrtool.infer.batching import iter_predictions

        rows = [
            r
            for batch in iter_predictions(
                self.engine, [str(path)], batch_size=1, workers=0, max_pending=1, cfg=self.cfg, trust=self.trust
            )
            for r in batch
        ]
        return rows[0]

    def _append(self, row: Prediction) -> None:
        """Append the row with predict's writer, fsync'd; the file is held like predict holds it."""
        from cxrtool.infer.writers import drop_torn_tail

        with owned_output(self.predictions):
            drop_torn_tail(self.predictions)  # a write cut by a full disk leaves at most one partial line
            try:
                self.writer.open(append=True)
                self.writer.write([row])
                self.writer.sync()
            finally:  # closed even when the disk is full (the error that matters is the one raised above)
                fh, self.writer.fh = self.writer.fh, None
                if fh is not None:
                    with contextlib.suppress(OSError):
                        fh.close()
        self._recorded.add(row.path)

    def _existing_results(self, path: Path, key: str) -> list[Path]:
        """The result files already written for this exact content and model (empty when any is missing)."""
        from cxrtool.dicom.read import read_dataset
        from cxrtool.results.layout import result_paths

        try:
            paths = result_paths(self.results, path, read_dataset(path, stop_before_pixels=True), self.model_id, key)
        except Exception:  # an unreadable header: the prediction reports it
            return []
        wanted = [paths["sr"], *([paths["sc"]] if self.maker else [])]
        return wanted if all(p.exists() for p in wanted) else []

    def _drop_superseded(self, path: Path, files: list[Path]) -> None:
        """Results of earlier content under the same SOP Instance UID are replaced: removed here and from the outbox.

        Result names begin with the spool name (layout keeps the source's stem), so its UID hash finds them.
        """
        keep = {f.name for f in files}
        stale = [p for p in self.results.glob("*.dcm") if p.name not in keep and self.spool.same_instance(p, path)]
        for p in stale:
            p.unlink(missing_ok=True)
        if stale:
            if self.outbox is not None:
                self.outbox.withdraw([p.name for p in stale])
            LOG.info(
                "film %s: new content for an instance analysed before; %d earlier result(s) replaced",
                path.name,
                len(stale),
            )

    @staticmethod
    def _is_own_result(path: Path) -> bool:
        from cxrtool.dicom.read import read_dataset
        from cxrtool.results.layout import is_cxrtool_result

        try:
            return is_cxrtool_result(read_dataset(path, stop_before_pixels=True))
        except Exception:  # unreadable: process() reports it like any bad film
            return False
