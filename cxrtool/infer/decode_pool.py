"""The crash-tolerant decode pool: files -> model inputs in worker processes, in input order.

Decoding is :func:`cxrtool.preprocess.load_input` with the model's own
:class:`~cxrtool.config.PreprocessCfg`, so a file is shown to the network exactly as in
training.  A file that cannot be decoded comes back with its one-line reason; even a decoder
that crashes its process only costs that one file.  Workers end with the run
(:func:`cxrtool.workers.die_with`), so a killed run leaves no decoder behind.

This module imports no torch: the forkserver preloads it and workers import it, and stay light.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from cxrtool.config import PreprocessCfg
from cxrtool.errors import ImageLoadError, one_line
from cxrtool.preprocess import load_input
from cxrtool.workers import die_with

DecodeFn = Callable[[str, PreprocessCfg], np.ndarray]
#: ``(path, model input or None, error reason or None)``
Decoded = tuple[str, np.ndarray | None, str | None]

#: the default decoder: the shared loader and preprocessing, exactly as in training
decode_file: DecodeFn = load_input

CRASH_REASON = "decoder process crashed on this file"
#: decode workers run this much nicer than the model: on a small CPU a worker that preempts one of
#: the model's OpenMP threads stalls all of them at the next barrier (measured: torch end-to-end
#: 0.42 -> 0.8 of 1/(decode + model) on 2 busy cores); niced, decoding fills the model's idle gaps.
WORKER_NICENESS = 10


#: CPU runtimes that run the whole graph on all cores with few gaps (unlike torch eager's many small ops)
GRAPH_RUNTIMES = frozenset({"onnxruntime", "openvino"})


def default_workers(backend: str = "torch", device: str = "cpu") -> int:
    """Decode processes for a backend: leave one core to the model, never fewer than one worker...

    ...except where a worker has no core to fill: a graph runtime on the CPU of a machine with two
    cores or fewer keeps both busy, and a decoder beside it only preempts its threads, so it decodes
    inline (bench/int8.py on the 2-core EPYC, DenseNet121 224 px, batch 16: end-to-end / ideal
    0.73-0.90 with one worker, 0.92-1.11 inline).  torch eager leaves gaps that a niced worker fills
    (0.92 with one worker, 0.77 inline), and a GPU backend leaves the CPU to the decoders.
    """
    cores = os.cpu_count() or 2
    if backend in GRAPH_RUNTIMES and device == "cpu" and cores <= 2:
        return 0
    return max(1, min(8, cores - 1))


def _decode_safely(path: str, cfg: PreprocessCfg, decode: DecodeFn) -> tuple[np.ndarray | None, str | None]:
    try:
        return decode(path, cfg), None
    except ImageLoadError as exc:
        return None, one_line(exc.reason)
    except Exception as exc:  # a decoder bug on one file must not stop the folder
        return None, one_line(f"{type(exc).__name__}: {exc}")


_WORKER: dict[str, Any] = {}


def _init_worker(owner_pid: int, cfg_json: str, decode: DecodeFn) -> None:
    """Ctrl-C is the run's to handle: it reaches the whole process group, and a worker that took it would die
    mid-``get`` with a ``KeyboardInterrupt`` traceback on the run's stderr (and break the pool) while the run shuts the
    pool down in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with(owner_pid)
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
        ctx.set_forkserver_preload([__name__])
        return ctx
    return multiprocessing.get_context("spawn")


def iter_decoded(
    paths: Iterable[str],
    cfg: PreprocessCfg,
    *,
    workers: int,
    max_pending: int,
    decode: DecodeFn = decode_file,
) -> Iterator[Decoded]:
    """Decode ``paths`` in input order, at most ``max_pending`` submitted but not yet consumed.

    The input iterator is pulled only as results are consumed, so neither the file list nor the
    decoded images ever pile up.  When a worker process dies (a native codec crash), the files
    that were in flight are retried one at a time in a fresh pool, which names the culprit.
    ``decode`` must be a module-level function or a picklable callable (worker processes receive
    it), e.g. :class:`cxrtool.dicomweb.source.InstanceDecoder`, which fetches before it decodes.
    """
    if workers == 0:
        for path in paths:
            yield (path, *_decode_safely(path, cfg, decode))
        return

    ctx = _mp_context()
    initargs = (os.getpid(), cfg.to_json(), decode)

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=initargs)

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
