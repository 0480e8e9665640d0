"""Checkpoint -> ONNX with dynamic batch and the model card in ``metadata_props``, checked against torch.

timm's ``onnx_export`` checks the forward pass but drops the preprocessing, so its users re-type
mean/std; here the full :class:`~cxrtool.models.checkpoint.ModelCard` (classes, task, preprocessing,
provenance) travels inside the file and every ONNX backend reads it back with :func:`read_onnx_card`.

The file is written only when ONNX Runtime reproduces the torch logits within a tolerance on the
same inputs (real films when given), so a bad export never lands on disk.

Outputs: ``logits`` (N, classes) and ``features`` (N, feature width): the pooled features the
out-of-distribution score is computed on (:mod:`cxrtool.trust`).  A checkpoint with OOD statistics
also ships them in the metadata (``cxrtool.trust_tensors``) and the export is refused unless
ONNX Runtime's ``ood_score`` matches torch's within :data:`OOD_RTOL`.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtool.config import PreprocessCfg
from cxrtool.export.options import CHECK_COUNT, ONNX_OPSET, ONNX_TOLERANCE
from cxrtool.export.parity import ParityError, ParityReport, check_batch, compare_logits
from cxrtool.modelfile import (
    FEATURES_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    TRUST_TENSORS_KEY,
    default_onnx_path,
    onnx_metadata,
)
from cxrtool.runtimes.onnxrt import ort_session, run_ort_in_two_batches

#: Largest relative ``ood_score`` difference allowed (|a - b| / max(1, |a|)), the issue's parity bar.
OOD_RTOL = 1e-3


@dataclass
class OnnxExport:
    path: Path
    parity: ParityReport
    seconds: float


def export_onnx(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    check_images: Sequence[str | Path] = (),
    check_count: int = CHECK_COUNT,
    tolerance: float = ONNX_TOLERANCE,
    opset: int = ONNX_OPSET,
) -> OnnxExport:
    """Export ``checkpoint`` to ONNX (dynamic batch, card in metadata) and check it against torch.

    Parameters
    ----------
    checkpoint:
        A cxrtool ``.safetensors`` checkpoint.
    out:
        Output file; default :func:`default_onnx_path`.
    check_images:
        Files/folders of real films for the parity check; without them seeded noise is used.
    check_count:
        How many films to check (spread over the folder).
    tolerance:
        Largest allowed max-abs logit difference between torch and ONNX Runtime.
    opset:
        ONNX opset of the torch.export-based exporter.

    Returns
    -------
    OnnxExport
        The written path, the parity report and the export time.

    Raises
    ------
    CxrError
        Unreadable checkpoint or check images, or parity above ``tolerance`` (nothing is written).
    """
    import torch

    from cxrtool.fsutil import atomic_path
    from cxrtool.models.checkpoint import load_checkpoint

    start = time.perf_counter()
    checkpoint = Path(checkpoint)
    model, card = load_checkpoint(checkpoint)
    out = Path(out) if out is not None else default_onnx_path(checkpoint)
    batch, kind, skipped = check_batch(card.preprocess, check_images, check_count)

    from cxrtool.modelfile.write import encode_tensors, set_onnx_metadata
    from cxrtool.trust import load_trust
    from cxrtool.trust.store import checkpoint_tensors

    trust = load_trust(checkpoint, card)
    proto = _to_onnx_proto(model, card.preprocess, opset)
    metadata = onnx_metadata(card, checkpoint)
    if trust.has_ood:
        metadata[TRUST_TENSORS_KEY] = encode_tensors(checkpoint_tensors(checkpoint))
    set_onnx_metadata(proto, metadata)
    with torch.inference_mode():
        reference, ref_features = (t.float().numpy() for t in model.forward_features(torch.from_numpy(batch)))

    import onnx

    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
        session = ort_session(tmp)
        got = run_ort_in_two_batches(session, batch)
        report = compare_logits(reference, got, tolerance=tolerance, inputs=kind)
        report.skipped = skipped
        if not report.ok:
            raise ParityError(
                f"{checkpoint}: ONNX export failed the parity check: max abs logit difference "
                f"{report.max_abs_diff:.3g} > tolerance {tolerance:g} on {report.n_inputs} {kind} inputs; "
                "nothing written"
            )
        if trust.has_ood:
            features = session.run([FEATURES_NAME], {INPUT_NAME: batch})[0]
            diff = ood_score_rdiff(trust.ood.score(ref_features), trust.ood.score(features))
            if diff > OOD_RTOL:
                raise ParityError(
                    f"{checkpoint}: ONNX export failed the parity check: ood_score differs by {diff:.3g} relative "
                    f"> {OOD_RTOL:g} on {len(batch)} {kind} inputs; nothing written"
                )
    return OnnxExport(out, report, time.perf_counter() - start)


def ood_score_rdiff(reference: Any, candidate: Any) -> float:
    """Largest ``|a - b| / max(1, |a|)`` between two score arrays (relative, absolute near zero)."""
    import numpy as np

    a, b = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    return float((np.abs(a - b) / np.maximum(1.0, np.abs(a))).max()) if a.size else 0.0


def _to_onnx_proto(model, cfg: PreprocessCfg, opset: int):
    """torch.export-based exporter (the default since torch 2.9; the TorchScript one is deprecated).

    Outputs ``logits`` and ``features`` (``forward_features``); the batch axis is a named dynamic
    dimension; the exporter's progress lines go nowhere, so stdout stays machine-readable.
    """
    import torch

    class WithFeatures(torch.nn.Module):
        """``forward`` = the classifier's ``forward_features``: the graph gets both outputs."""

        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.net.forward_features(x)

    example = torch.zeros(2, cfg.channels, cfg.input_size, cfg.input_size)
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            WithFeatures(model).eval(),
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME, FEATURES_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    return program.model_proto
