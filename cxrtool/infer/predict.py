"""Folder prediction as a pipeline that a workstation can run all day.

Stages, each bounded so memory stays flat on a 100,000-file folder::

    discover (lazy walk) -> shard / resume filter -> decode in worker processes
    -> at most ``max_pending`` decoded inputs in flight -> batched inference -> streamed rows

Decoding is :func:`cxrtool.images.load_image` + :func:`cxrtool.preprocess.to_model_input` with
the model's own :class:`~cxrtool.config.PreprocessCfg`, so a file is shown to the network exactly
as in training.  A file that cannot be decoded becomes an error row with its reason; even a
decoder that crashes its process only costs that one file.  Rows are appended and flushed after
every batch, so a crash loses nothing that finished, and ``resume`` skips every path already
recorded.

This module imports no torch: worker processes import it to decode, and stay light.
"""

from __future__ import annotations

import abc
import csv
import hashlib
import io
import json
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrtool.config import PreprocessCfg, resolve_preprocess
from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.images import iter_input_files, load_image
from cxrtool.preprocess import to_model_input

if TYPE_CHECKING:
    from cxrtool.infer.backends import Backend

#: failures kept in the summary (all of them are in the output file; this only bounds memory)
MAX_FAILURES_KEPT = 50

DecodeFn = Callable[[str, PreprocessCfg], np.ndarray]


def default_workers() -> int:
    """Decode processes: leave one core to the model, never fewer than one worker."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict_to_file` runs; every field has a workstation-friendly default.

    Attributes
    ----------
    batch_size:
        Inputs per backend call.
    workers:
        Decode processes; 0 decodes in the calling process (no pipelining, for debugging).
    shard:
        ``(i, n)`` with 1 <= i <= n: predict only the files whose stable key hashes to shard i.
    resume:
        Append to an existing output, skipping every path it already records (ok or error).
    overwrite:
        Replace an existing output instead of refusing.
    window:
        DICOM display policy overriding the model's (``dicom``, ``minmax``, ``none``).
    max_pending:
        Decoded-or-decoding inputs in flight; default ``2 * batch_size + 2 * workers``.
    """

    batch_size: int = 16
    workers: int = field(default_factory=default_workers)
    shard: tuple[int, int] | None = None
    resume: bool = False
    overwrite: bool = False
    window: str | None = None
    max_pending: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise CxrError(f"batch size must be at least 1, not {self.batch_size}")
        if self.workers < 0:
            raise CxrError(f"workers must be 0 or more, not {self.workers}")
        if self.shard is not None:
            i, n = self.shard
            if not (n >= 1 and 1 <= i <= n):
                raise CxrError(f"shard must be i/n with 1 <= i <= n, not {i}/{n}")
        if self.resume and self.overwrite:
            raise CxrError("--resume and --overwrite exclude each other")

    @property
    def pending_limit(self) -> int:
        return self.max_pending or 2 * self.batch_size + 2 * self.workers


@dataclass
class Prediction:
    """One input's outcome: probabilities, or the reason it failed."""

    path: str
    probs: np.ndarray | None = None
    error: str | None = None


@dataclass
class PredictSummary:
    """What a run did, small enough to keep for any folder size."""

    out: Path
    model_id: str
    backend: str
    device: str
    class_names: list[str]
    predicted: int = 0
    failed: int = 0
    skipped_resume: int = 0
    skipped_shard: int = 0
    per_class: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------- discovery, shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)`` (1-based, like test sharding tools); a clear error otherwise."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise CxrError(f"--shard wants i/n such as 1/4, not {text!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise CxrError(f"--shard wants 1 <= i <= n, not {text!r}")
    return i, n


def shard_of(key: str, n: int) -> int:
    """Stable 1-based shard of a key (blake2b, not ``hash()``, which changes per process)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n + 1


def iter_jobs(inputs: Iterable[str | Path]) -> Iterator[tuple[Path, str]]:
    """Lazily yield ``(file, shard key)``.

    The key is the path relative to the folder argument (or the bare name of a file argument), so
    machines that mount the same folder at different places still agree on who predicts what.
    """
    for arg in inputs:
        arg = Path(arg)
        for path in iter_input_files([arg]):
            key = path.relative_to(arg).as_posix() if arg.is_dir() else path.name
            yield path, key


# ---------------------------------------------------------------- decoding


def decode_file(path: str, cfg: PreprocessCfg) -> np.ndarray:
    """One file -> model input (C, H, W) float32, through the shared loader and preprocessing."""
    return to_model_input(load_image(path, window=cfg.window), cfg)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _decode_safely(path: str, cfg: PreprocessCfg, decode: DecodeFn) -> tuple[np.ndarray | None, str | None]:
    try:
        return decode(path, cfg), None
    except ImageLoadError as exc:
        return None, _one_line(exc.reason)
    except Exception as exc:  # a decoder bug on one file must not stop the folder
        return None, _one_line(f"{type(exc).__name__}: {exc}")


_WORKER: dict[str, Any] = {}
#: decode workers run this much nicer than the model: on a small CPU a worker that preempts one of
#: the model's OpenMP threads stalls all of them at the next barrier (measured: torch end-to-end
#: 0.42 -> 0.8 of 1/(decode + model) on 2 busy cores); niced, decoding fills the model's idle gaps.
WORKER_NICENESS = 10


def _init_worker(cfg_json: str, decode: DecodeFn) -> None:
    if hasattr(os, "nice"):
        os.nice(WORKER_NICENESS)
    _WORKER["cfg"] = PreprocessCfg.from_json(cfg_json)
    _WORKER["decode"] = decode


def _decode_in_worker(path: str) -> tuple[np.ndarray | None, str | None]:
    return _decode_safely(path, _WORKER["cfg"], _WORKER["decode"])


def _mp_context() -> multiprocessing.context.BaseContext:
    """forkserver where it exists: children start fast and never inherit the model's threads."""
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["cxrtool.infer.predict"])
        return ctx
    return multiprocessing.get_context("spawn")


CRASH_REASON = "decoder process crashed on this file"


def iter_decoded(
    paths: Iterable[str],
    cfg: PreprocessCfg,
    *,
    workers: int,
    max_pending: int,
    decode: DecodeFn = decode_file,
) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """Decode ``paths`` in input order, at most ``max_pending`` submitted but not yet consumed.

    The input iterator is pulled only as results are consumed, so neither the file list nor the
    decoded images ever pile up.  When a worker process dies (a native codec crash), the files
    that were in flight are retried one at a time in a fresh pool, which names the culprit.
    """
    if workers == 0:
        for path in paths:
            yield (path, *_decode_safely(path, cfg, decode))
        return

    ctx = _mp_context()

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg.to_json(), decode))

    def restart(old: ProcessPoolExecutor) -> ProcessPoolExecutor:
        old.shutdown(wait=True, cancel_futures=True)
        return new_pool()

    pool = new_pool()
    pending: deque[tuple[str, Future]] = deque()
    source = iter(paths)
    try:
        while True:
            refused = None  # a path the pool would not take because it had just broken
            while len(pending) < max_pending:
                path = next(source, None)
                if path is None:
                    break
                try:
                    pending.append((path, pool.submit(_decode_in_worker, path)))
                except BrokenProcessPool:
                    refused = path
                    break
            if refused is None:
                if not pending:
                    return
                path, fut = pending.popleft()
                try:
                    yield (path, *fut.result())
                    continue
                except BrokenProcessPool:
                    suspects = [path] + [p for p, _ in pending]
            else:
                suspects = [p for p, _ in pending] + [refused]
            pending.clear()
            pool = restart(pool)
            for suspect in suspects:  # one at a time, so a crash names its own file
                try:
                    result = pool.submit(_decode_in_worker, suspect).result()
                except BrokenProcessPool:
                    result = (None, CRASH_REASON)
                    pool = restart(pool)
                yield (suspect, *result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- inference


def predicted_label(probs: np.ndarray, class_names: Sequence[str], task: str) -> str:
    """Argmax for multiclass; every class at p >= 0.5 (``;``-joined) for multilabel."""
    if task == "multilabel":
        return ";".join(c for c, p in zip(class_names, probs) if p >= 0.5)
    return class_names[int(np.argmax(probs))]


def iter_predictions(
    backend: Backend,
    paths: Iterable[str],
    *,
    batch_size: int,
    workers: int,
    max_pending: int,
    cfg: PreprocessCfg | None = None,
    decode: DecodeFn = decode_file,
) -> Iterator[list[Prediction]]:
    """Yield predictions one batch at a time (error rows with the batch in which they surfaced)."""
    from cxrtool.infer.backends import probabilities

    cfg = cfg or backend.card.preprocess
    ready: list[tuple[str, np.ndarray]] = []
    failed: list[Prediction] = []

    def flush() -> list[Prediction]:
        rows = list(failed)
        failed.clear()
        if ready:
            logits = backend.run(np.stack([x for _, x in ready]))
            probs = probabilities(logits, backend.card.task)
            rows.extend(Prediction(p, probs=pr) for (p, _), pr in zip(ready, probs))
            ready.clear()
        return rows

    for path, x, error in iter_decoded(paths, cfg, workers=workers, max_pending=max_pending, decode=decode):
        if error is not None:
            failed.append(Prediction(path, error=error))
        else:
            ready.append((path, x))
        if len(ready) >= batch_size or len(failed) >= batch_size:
            yield flush()
    if ready or failed:
        yield flush()


# ---------------------------------------------------------------- output


def model_id(path: str | Path) -> str:
    """``<file stem>@<sha256 prefix>``: names the exact model file that made a row."""
    from cxrtool.models.checkpoint import file_sha256

    path = Path(path)
    return f"{path.stem}@{file_sha256(path)[:12]}"


class _Writer(abc.ABC):
    """Appends rows and flushes them to disk after every batch (streamed output, not atomic)."""

    def __init__(self, path: Path, class_names: list[str], task: str, meta: dict[str, str]):
        self.path = path
        self.class_names = class_names
        self.task = task
        self.meta = meta
        self.fh: io.TextIOBase | None = None

    @abc.abstractmethod
    def recorded_paths(self) -> set[str]:
        """Paths already in the file; checks it was made by this model with these classes."""

    def open(self, *, append: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not append or not self.path.exists() or self.path.stat().st_size == 0
        self.fh = open(self.path, "a" if append else "w", encoding="utf-8", newline="")
        if fresh:
            self._start()

    def _start(self) -> None:
        """Write whatever a new file begins with."""

    @abc.abstractmethod
    def write(self, rows: list[Prediction]) -> None:
        """Append rows (not yet synced)."""

    def sync(self) -> None:
        assert self.fh is not None
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.sync()
            self.fh.close()
            self.fh = None

    def _check_model(self, found: str | None) -> None:
        if found and found != self.meta["model_id"]:
            raise CxrError(
                f"{self.path}: was written by model {found}, not {self.meta['model_id']}; "
                "use another --out (or --overwrite)"
            )


class _CsvWriter(_Writer):
    def columns(self) -> list[str]:
        return ["path", "predicted", *[f"p:{c}" for c in self.class_names], "model_id", "backend", "device", "error"]

    def recorded_paths(self) -> set[str]:
        seen: set[str] = set()
        with open(self.path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                return seen
            if list(reader.fieldnames) != self.columns():
                raise CxrError(f"{self.path}: its columns differ from this model's; use another --out (or --overwrite)")
            for row in reader:
                if row.get("error") is None:
                    raise CxrError(f"{self.path}: line {reader.line_num} has missing columns; not a predict output?")
                self._check_model(row.get("model_id"))
                seen.add(row["path"])
        return seen

    def _start(self) -> None:
        csv.writer(self.fh, lineterminator="\n").writerow(self.columns())

    def write(self, rows: list[Prediction]) -> None:
        w = csv.writer(self.fh, lineterminator="\n")
        meta = [self.meta["model_id"], self.meta["backend"], self.meta["device"]]
        blank = [""] * len(self.class_names)
        for r in rows:
            if r.probs is None:
                w.writerow([r.path, "", *blank, *meta, r.error])
            else:
                probs = [f"{p:.6f}" for p in r.probs]
                w.writerow([r.path, predicted_label(r.probs, self.class_names, self.task), *probs, *meta, ""])


class _JsonlWriter(_Writer):
    def recorded_paths(self) -> set[str]:
        seen: set[str] = set()
        with open(self.path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise CxrError(f"{self.path}: line {number} is not JSON; not a predict output?") from None
                if list(row.get("probabilities") or self.class_names) != self.class_names:
                    raise CxrError(f"{self.path}: its classes differ from this model's; use another --out (or --overwrite)")
                self._check_model(row.get("model_id"))
                seen.add(row["path"])
        return seen

    def write(self, rows: list[Prediction]) -> None:
        for r in rows:
            if r.probs is None:
                rec = {"path": r.path, "predicted": None, "probabilities": None, **self.meta, "error": r.error}
            else:
                rec = {
                    "path": r.path,
                    "predicted": predicted_label(r.probs, self.class_names, self.task),
                    "probabilities": {c: round(float(p), 6) for c, p in zip(self.class_names, r.probs)},
                    **self.meta,
                    "error": None,
                }
            self.fh.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _drop_torn_tail(path: Path) -> None:
    """Cut a half-written last line (a crash in the middle of a write) before appending."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data_end = fh.seek(0, os.SEEK_END)
        pos = data_end
        while pos > 0:
            step = min(1 << 16, pos)
            fh.seek(pos - step)
            chunk = fh.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                fh.truncate(pos - step + nl + 1)
                return
            pos -= step
        fh.truncate(0)


_WRITERS: dict[str, type[_Writer]] = {".csv": _CsvWriter, ".jsonl": _JsonlWriter}


def _writer_class(out: Path) -> type[_Writer]:
    try:
        return _WRITERS[out.suffix.lower()]
    except KeyError:
        raise CxrError(f"{out}: output must end in {' or '.join(_WRITERS)}") from None


# ---------------------------------------------------------------- the whole run


def predict_to_file(
    inputs: Sequence[str | Path],
    model: str | Path | Backend,
    out: str | Path,
    options: PredictOptions | None = None,
    *,
    backend: str = "auto",
    device: str = "cpu",
    on_rows: Callable[[list[Prediction]], None] | None = None,
    decode: DecodeFn = decode_file,
) -> PredictSummary:
    """Predict every input file (recursively) into a streamed CSV/JSONL file.

    Parameters
    ----------
    inputs:
        Files and folders.
    model:
        A model file (loaded with ``backend`` on ``device``) or an already loaded backend.
    out:
        ``.csv`` or ``.jsonl``; rows are appended and flushed after every batch.
    options:
        Batch size, workers, shard, resume/overwrite, window override.
    on_rows:
        Called with every written batch of rows (progress display).
    decode:
        The per-file decoder (a module-level function, since worker processes import it).

    Returns
    -------
    PredictSummary
        Counts per class, failures (the first :data:`MAX_FAILURES_KEPT`), speed.

    Raises
    ------
    CxrError
        Unusable model, output format or an output that belongs to another model.
    """
    options = options or PredictOptions()
    out = Path(out)
    writer_cls = _writer_class(out)
    if out.exists() and not (options.resume or options.overwrite):
        raise CxrError(f"{out}: already exists; pass --resume to continue it or --overwrite to replace it")

    if isinstance(model, (str, Path)):
        from cxrtool.infer.backends import load_backend

        engine = load_backend(model, backend=backend, device=device)
    else:
        engine = model
    card = engine.card
    cfg = resolve_preprocess(card.preprocess, {"window": options.window})
    described = engine.describe()
    meta = {"model_id": model_id(engine.path), "backend": described["backend"], "device": described["device"]}
    writer = writer_cls(out, list(card.class_names), card.task, meta)
    summary = PredictSummary(out, meta["model_id"], meta["backend"], meta["device"], list(card.class_names))

    done: set[str] = set()
    if options.resume and out.exists():
        _drop_torn_tail(out)  # a crash mid-write leaves at most one partial line
        done = writer.recorded_paths()

    def wanted() -> Iterator[str]:
        for path, key in iter_jobs(inputs):
            if options.shard and shard_of(key, options.shard[1]) != options.shard[0]:
                summary.skipped_shard += 1
            elif str(path) in done:
                summary.skipped_resume += 1
            else:
                yield str(path)

    start = time.perf_counter()
    writer.open(append=options.resume)
    try:
        batches = iter_predictions(
            engine,
            wanted(),
            batch_size=options.batch_size,
            workers=options.workers,
            max_pending=options.pending_limit,
            cfg=cfg,
            decode=decode,
        )
        for rows in batches:
            writer.write(rows)
            writer.sync()
            _tally(summary, rows, card.task)
            if on_rows is not None:
                on_rows(rows)
    finally:
        writer.close()
        summary.seconds = time.perf_counter() - start
    return summary


def _tally(summary: PredictSummary, rows: list[Prediction], task: str) -> None:
    for r in rows:
        if r.probs is None:
            summary.failed += 1
            if len(summary.failures) < MAX_FAILURES_KEPT:
                summary.failures.append((r.path, r.error or ""))
        else:
            summary.predicted += 1
            summary.per_class[predicted_label(r.probs, summary.class_names, task) or "(none)"] += 1
