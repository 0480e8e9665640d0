"""Decoded inputs -> backend batches -> :class:`~cxrtool.infer.rows.Prediction` rows.

Every batch's logits pass :func:`cxrtool.infer.backends.check_finite` before
:meth:`cxrtool.trust.Trust.assess` turns them (with the pooled features and the DICOM header
gate and the view rules, which read ``inputs``, the array every backend gets) into calibrated
probabilities, ``ood_score`` and ``flag``: a NaN/Inf output becomes that
input's error row, never a silent ``nan`` probability.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from cxrtool.config import PreprocessCfg
from cxrtool.infer.backends import check_finite
from cxrtool.infer.decode_pool import DecodeFn, decode_file, iter_decoded
from cxrtool.infer.rows import Prediction

#: a job name -> what its DICOM header says (None: no header to check)
HeaderFn = Callable[[str], "HeaderVerdict | None"]

if TYPE_CHECKING:
    from cxrtool.infer.backends import Backend
    from cxrtool.trust import Trust
    from cxrtool.trust.gate import HeaderVerdict


def predict_batch(
    backend: Backend, paths: list[str], inputs: np.ndarray, trust: Trust | None = None, header: HeaderFn | None = None
) -> list[Prediction]:
    """One backend call: a row per input, an error row where the model's output is not finite.

    ``trust`` (default: the model file's own, :func:`default_trust`) calibrates and flags every row;
    ``header`` (default: :func:`cxrtool.trust.gate.header_verdict` of the file) gives its header gate verdict.
    """
    from cxrtool.trust.gate import header_verdict
    from cxrtool.trust.view import view_verdicts

    gate = header or header_verdict
    trust = trust or default_trust(backend)
    logits, features = backend.run_features(inputs) if trust.has_ood else (backend.run(inputs), None)
    reasons = check_finite(logits, paths)
    # bad rows are reported, not computed
    verdicts = trust.assess(np.nan_to_num(logits), features, [gate(p) for p in paths], view_verdicts(inputs))
    return [
        Prediction(path, error=reason or v.error)
        if reason or v.error
        else Prediction(path, probs=v.probs, ood_score=v.ood_score, flag=v.flag)
        for path, v, reason in zip(paths, verdicts, reasons)
    ]


def default_trust(backend: Backend) -> Trust:
    """The backend's model file's trust statistics: from the run's loaded model (built once per model) when it has
    one, else read from the file."""
    from cxrtool.trust import load_trust

    return load_trust(backend.loaded) if backend.loaded is not None else load_trust(backend.path, backend.card)


def iter_predictions(
    backend: Backend,
    paths: Iterable[str],
    *,
    batch_size: int,
    workers: int,
    max_pending: int,
    cfg: PreprocessCfg | None = None,
    decode: DecodeFn = decode_file,
    trust: Trust | None = None,
    header: HeaderFn | None = None,
) -> Iterator[list[Prediction]]:
    """Yield predictions one batch at a time (error rows with the batch in which they surfaced)."""
    cfg = cfg or backend.card.preprocess
    trust = trust or default_trust(backend)  # once per run, not once per batch
    ready: list[tuple[str, np.ndarray]] = []
    failed: list[Prediction] = []

    def flush() -> list[Prediction]:
        rows = list(failed)
        failed.clear()
        if ready:
            rows.extend(predict_batch(backend, [p for p, _ in ready], np.stack([x for _, x in ready]), trust, header))
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
