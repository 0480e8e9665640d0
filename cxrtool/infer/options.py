"""How predict and bench are asked to run, apart from the pipeline: ``--help`` reads these defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass

from cxrtool.errors import CxrError


@dataclass(frozen=True)
class PredictOptions:
    """How :func:`predict_to_file` runs; every field has a workstation-friendly default.

    Attributes
    ----------
    batch_size:
        Inputs per backend call.
    workers:
        Decode processes; 0 decodes in the calling process; None (default) chooses for the backend
        (:func:`~cxrtool.infer.decode_pool.default_workers`).
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
    reject_ood:
        Leave ``predicted`` empty for flagged films (out of distribution, failing the header gate or the view check).
    """

    batch_size: int = 16
    workers: int | None = None
    shard: tuple[int, int] | None = None
    resume: bool = False
    overwrite: bool = False
    window: str | None = None
    max_pending: int | None = None
    reject_ood: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise CxrError(f"batch size must be at least 1, not {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise CxrError(f"workers must be 0 or more, not {self.workers}")
        if self.shard is not None:
            i, n = self.shard
            if not (n >= 1 and 1 <= i <= n):
                raise CxrError(f"shard must be i/n with 1 <= i <= n, not {i}/{n}")
        if self.resume and self.overwrite:
            raise CxrError("--resume and --overwrite exclude each other")

    @property
    def pending_limit(self) -> int:
        return self.max_pending or 2 * self.batch_size + 2 * (self.workers or 0)


#: ``cxrtool bench`` defaults (:func:`cxrtool.infer.measure.run_bench`): batch sizes, films from ``--data``
#: (0 = all), seconds of timed model-only runs per row
BENCH_BATCH_SIZES: tuple[int, ...] = (1, 16)
BENCH_IMAGES = 128
BENCH_MIN_TIME = 3.0
