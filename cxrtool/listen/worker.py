"""The listen worker: one spooled film at a time through predict's and explain's own core.

Prediction is :func:`cxrtool.infer.predict.predict_to_file` (appending the film's row to
``predictions.csv`` in predict's format, trust columns included), the heatmap is explain's
:class:`~cxrtool.results.heatmap.HeatmapMaker`, the objects come from
:func:`cxrtool.results.write_dicom_results`.  No model code runs in the network handlers.
"""

from __future__ import annotations

import csv
import logging
import threading
from pathlib import Path

from cxrtool.errors import one_line
from cxrtool.fsutil import open_names
from cxrtool.listen.outbox import Outbox
from cxrtool.listen.spool import Spool

LOG = logging.getLogger("cxrtool.listen")


class Worker:
    """Processes the spool until stopped; the film in progress is always finished first."""

    def __init__(self, model: str | Path, out: str | Path, spool: Spool, outbox: Outbox | None, *,
                 backend: str = "auto", device: str = "cpu", composite: str | None = None):
        from cxrtool.infer.backends import load_backend
        from cxrtool.results.heatmap import HeatmapMaker

        self.out = Path(out)
        self.spool = spool
        self.outbox = outbox
        self.engine = load_backend(model, backend=backend, device=device)
        self.maker = HeatmapMaker(model, composite) if Path(model).suffix.lower() == ".safetensors" else None
        self.predictions = self.out / "predictions.csv"
        self.processed = 0
        self.failed = 0
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
            pending = self.spool.pending()
            if not pending:
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            try:
                self.process(pending[0])
            except Exception as exc:  # the loop itself must outlive anything a film or the disk does
                LOG.error("worker: %s", one_line(f"{type(exc).__name__}: {exc}"))
                self._stop.wait(1.0)

    def process(self, path: Path) -> list[Path]:
        """One film: prediction row, SR (+ SC), outbox; a film that fails goes to ``failed/`` with a logged reason."""
        from cxrtool.infer.predict import PredictOptions, predict_to_file
        from cxrtool.results import FilmPrediction, ModelInfo, write_dicom_results

        LOG.info("film %s: processing", path.name)
        if self._is_own_result(path):
            LOG.info("film %s: a cxrtool result sent back to us; not analysed", path.name)
            self.spool.done(path)
            return []
        try:
            predict_to_file([path], self.engine, self.predictions, PredictOptions(batch_size=1, workers=0, resume=True))
            row = self._row(path)
            if row.get("error"):
                raise ValueError(row["error"])
            names = list(self.engine.card.class_names)
            prediction = FilmPrediction.from_row(row, names)
            heatmap = self.maker.make(path, prediction.top[0])[0] if self.maker else None
            info = ModelInfo(model_id=row["model_id"], backend=row["backend"])
            files = write_dicom_results(path, prediction, heatmap, self.out / "results", info)
        except Exception as exc:  # one bad film never stops the service
            self.failed += 1
            kept = self.spool.fail(path)
            LOG.error("film %s failed: %s (kept in %s)", path.name, one_line(exc), kept.parent)
            return []
        if self.outbox is not None:
            self.outbox.add(files)
        self.spool.done(path)
        self.processed += 1
        LOG.info("film %s: %s -> %d result object(s)", path.name, prediction.predicted or "(none)", len(files))
        return files

    @staticmethod
    def _is_own_result(path: Path) -> bool:
        from cxrtool.dicom.read import read_dataset
        from cxrtool.results.layout import is_cxrtool_result

        try:
            return is_cxrtool_result(read_dataset(path, stop_before_pixels=True))
        except Exception:  # unreadable: process() reports it like any bad film
            return False

    def _row(self, path: Path) -> dict:
        found: dict = {}
        with open_names(self.predictions) as fh:
            for row in csv.DictReader(fh):
                if row["path"] == str(path):
                    found = row
        if not found:
            raise ValueError("no prediction row was written")
        return found
