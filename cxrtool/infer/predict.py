"""Folder prediction as a pipeline that a workstation can run all day: the orchestration.

Stages, each in its own module and each bounded so memory stays flat on a 100,000-file folder::

    jobs (lazy walk, shard / resume filter) -> decode_pool (worker processes, <= max_pending in flight)
    -> batching (backend batches -> Prediction rows) -> writers (CSV/JSONL, appended + fsync'd per batch)

A file that cannot be decoded, or whose model output is not finite, becomes an error row with its
reason.  Rows are flushed after every batch, so a crash loses nothing that finished, and
``resume`` skips every path already recorded.  The output is owned by one run at a time
(:func:`cxrtool.locks.owned_output`): a second run on it refuses at once.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtool.config import resolve_preprocess
from cxrtool.errors import CxrError
from cxrtool.fsutil import display_path
from cxrtool.infer.batching import HeaderFn, iter_predictions
from cxrtool.infer.decode_pool import DecodeFn, decode_file, default_workers
from cxrtool.infer.jobs import JobSource, select_paths
from cxrtool.infer.options import PredictOptions
from cxrtool.infer.rows import Prediction, RowFormat
from cxrtool.infer.writers import drop_torn_tail, writer_class
from cxrtool.inputs import max_pixels
from cxrtool.locks import owned_output
from cxrtool.modelfile.loaded import LoadedModel
from cxrtool.trust import load_trust
from cxrtool.trust.assess import NO_STATS_NOTICE
from cxrtool.trust.shortcut import card_warning

if TYPE_CHECKING:
    from cxrtool.infer.backends import Backend
    from cxrtool.task import Task

#: failures kept in the summary (all of them are in the output file; this only bounds memory)
MAX_FAILURES_KEPT = 50


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
    choice: str | None = None  # why ``auto`` picked this backend (None for an explicit one)
    flags: Counter = field(default_factory=Counter)  # flag -> films (ok, out_of_distribution, header:..., view:...)
    scored: int = 0  # films with an ood_score
    notices: list[str] = field(default_factory=list)  # one line each, e.g. a model without OOD statistics

    @property
    def flagged(self) -> int:
        return sum(n for flag, n in self.flags.items() if flag != "ok")

    @property
    def images_per_s(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0


def predict_to_file(
    inputs: Sequence[str | Path | JobSource],
    model: LoadedModel | Backend | str | Path,
    out: str | Path,
    options: PredictOptions | None = None,
    *,
    backend: str = "auto",
    device: str = "cpu",
    on_start: Callable[[RowFormat], None] | None = None,
    on_rows: Callable[[list[Prediction]], None] | None = None,
    decode: DecodeFn = decode_file,
    header: HeaderFn | None = None,
) -> PredictSummary:
    """Predict every input file (recursively) into a streamed CSV/JSONL file.

    Parameters
    ----------
    inputs:
        Files and folders, or :class:`~cxrtool.infer.jobs.JobSource` objects (DICOMweb instances).
    model:
        The run's opened model file (:func:`~cxrtool.modelfile.loaded.open_model`; a backend is built
        from it with ``backend`` on ``device``), or a backend already built from one.  A path is opened here.
    out:
        ``.csv`` or ``.jsonl``; rows are appended and flushed after every batch.
    options:
        Batch size, workers, shard, resume/overwrite, window override.
    on_start:
        Called once with the run's row format when the output is owned (and, resuming, its torn tail cut),
        before the first row: a sink that keeps its own record beside the output starts it here.
    on_rows:
        Called with every written batch of rows, once they are on disk (progress display, a results sink).
    decode:
        The per-file decoder (a module-level function or picklable callable: worker processes receive it).
    header:
        The header gate's reason per input (default: read from the file); a DICOMweb source gives its own.

    Returns
    -------
    PredictSummary
        Counts per class, failures (the first :data:`MAX_FAILURES_KEPT`), speed.

    Raises
    ------
    CxrError
        Unusable model or output format, an output that belongs to another model, or one that
        another run is writing (:class:`~cxrtool.locks.OutputBusy`, naming its pid).
    """
    options = options or PredictOptions()
    max_pixels()  # a bad $CXRTOOL_MAX_PIXELS is a usage error before any file is read, not an error per file
    out = Path(out)
    writer_cls = writer_class(out)
    with owned_output(out):  # held from the existence check to the last row: no second writer, no stale resume set
        if out.exists() and not (options.resume or options.overwrite):
            raise CxrError(
                f"{display_path(out)}: already exists; pass --resume to continue it or --overwrite to replace it"
            )

        if isinstance(model, (str, Path, LoadedModel)):
            from cxrtool.infer.loading import load_backend

            engine = load_backend(model, backend=backend, device=device)
        else:
            engine = model
        if engine.loaded is None:
            raise CxrError(f"{display_path(engine.path)}: backend was not built with load_backend (no loaded model)")
        card = engine.card
        if options.workers is None:
            options = replace(options, workers=default_workers(engine.name, engine.device))
        cfg = resolve_preprocess(card.preprocess, {"window": options.window})
        described = engine.describe()
        meta = {"model_id": engine.loaded.model_id, "backend": described["backend"], "device": described["device"]}
        trust = load_trust(engine.loaded)
        writer = writer_cls(out, RowFormat(list(card.class_names), card.task, meta, reject_ood=options.reject_ood))
        summary = PredictSummary(out, meta["model_id"], meta["backend"], meta["device"], list(card.class_names))
        summary.choice = described.get("choice")
        if not trust.has_ood:
            summary.notices.append(NO_STATS_NOTICE.format(model=display_path(engine.path)))
        if shortcut := card_warning(card.dataset):
            summary.notices.append(f"{display_path(engine.path)}: {shortcut}")

        done: set[str] = set()
        if options.resume and out.exists():
            drop_torn_tail(out)  # a crash mid-write leaves at most one partial line
            done = writer.recorded_paths()
        if on_start is not None:
            on_start(writer.fmt)

        skipped: Counter = Counter()
        start = time.perf_counter()
        writer.open(append=options.resume)
        try:
            # closing(): a writer error or Ctrl-C mid-run still shuts the decode pool down here, before predict
            # returns, not whenever the suspended generator is collected (at exit, after multiprocessing's
            # resource tracker may be gone: its KeyError tracebacks)
            with contextlib.closing(
                iter_predictions(
                    engine,
                    select_paths(inputs, shard=options.shard, done=done, skipped=skipped),
                    batch_size=options.batch_size,
                    workers=options.workers,
                    max_pending=options.pending_limit,
                    cfg=cfg,
                    decode=decode,
                    trust=trust,
                    header=header,
                )
            ) as batches:
                for rows in batches:
                    writer.write(rows)
                    writer.sync()
                    _tally(summary, rows, card.task, reject_ood=options.reject_ood)
                    if on_rows is not None:
                        on_rows(rows)
        finally:
            writer.close()
            summary.seconds = time.perf_counter() - start
            summary.skipped_shard, summary.skipped_resume = skipped["shard"], skipped["resume"]
    if trust.has_ood and summary.predicted and not summary.scored:
        summary.notices.append(
            f"{display_path(engine.path)}: gives no features output, so ood_score stays empty; "
            "export it again with `cxrtool export --onnx`"
        )
    return summary


def _tally(summary: PredictSummary, rows: list[Prediction], task: Task, *, reject_ood: bool = False) -> None:
    for r in rows:
        if r.probs is None:
            summary.failed += 1
            if len(summary.failures) < MAX_FAILURES_KEPT:
                summary.failures.append((r.path, r.error or ""))
        else:
            summary.predicted += 1
            rejected = reject_ood and r.flag not in (None, "ok")
            summary.per_class[
                "(rejected: flagged)" if rejected else task.decide(r.probs, summary.class_names) or "(none)"
            ] += 1
            summary.flags[r.flag or "ok"] += 1
            summary.scored += r.ood_score is not None
