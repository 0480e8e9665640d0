"""One way to open an ONNX Runtime session, shared by the export checks and the inference backend."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrtool.errors import CxrError, one_line


def ort_session(
    path: str | Path | bytes,
    *,
    threads: int | None = None,
    providers: Sequence[Any] = ("CPUExecutionProvider",),
    name: str | Path | None = None,
) -> Any:
    """An ONNX Runtime session with full graph optimisation (shared by the backend and the checks).

    ``path`` may be the model's bytes already read (then ``name`` names it in errors).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    try:
        source = path if isinstance(path, bytes) else str(path)
        return ort.InferenceSession(source, sess_options=opts, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise CxrError(f"{name or path}: ONNX Runtime cannot load it ({one_line(exc)})") from None


def run_ort_in_two_batches(session, batch: np.ndarray) -> np.ndarray:
    """Logits for ``batch`` run as batch 1 and batch N-1, so the check also proves the batch axis is dynamic."""
    name = session.get_inputs()[0].name
    parts = [batch[:1], batch[1:]] if len(batch) > 1 else [batch]
    return np.concatenate([session.run(None, {name: p})[0] for p in parts])
