"""Checkpoint -> ONNX with dynamic batch and the model card in ``metadata_props``, checked against torch.

timm's ``onnx_export`` checks the forward pass but drops the preprocessing, so its users re-type
mean/std; here the full :class:`~cxrtool.models.checkpoint.ModelCard` (classes, task, preprocessing,
provenance) travels inside the file and every ONNX backend reads it back with :func:`read_onnx_card`.

The file is written only when ONNX Runtime reproduces the torch logits within a tolerance on the
same inputs (real films when given), so a bad export never lands on disk.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrtool import __version__
from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.images import iter_input_files, load_image
from cxrtool.models.checkpoint import ModelCard, file_sha256
from cxrtool.preprocess import to_model_input

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: metadata_props keys (all strings)
CARD_KEY = "cxrtool.card"
SOURCE_SHA_KEY = "cxrtool.source_sha256"
SOURCE_NAME_KEY = "cxrtool.source_name"
VERSION_KEY = "cxrtool.version"
CREATED_KEY = "cxrtool.created"

DEFAULT_OPSET = 18
#: Max abs logit difference allowed between torch and ONNX Runtime, both fp32.  Kernels that only
#: reorder sums differ by ~1e-6 relative (seen: <1e-5 on DenseNet121); a gap of 1e-3 means an op
#: was translated with different semantics, not round-off, while still far below any margin that
#: decides a prediction.
DEFAULT_TOLERANCE = 1e-3
DEFAULT_CHECK_COUNT = 16
ENGINES_DIR = "engines"


class ParityError(CxrError):
    """An export ran but its outputs differ from the reference beyond the tolerance (nothing was written)."""


@dataclass
class ParityReport:
    """Reference vs. candidate logits on the same inputs."""

    n_inputs: int
    inputs: str  # "real" (films) or "synthetic" (seeded normal noise)
    max_abs_diff: float
    top1_agreement: float
    tolerance: float
    skipped: list[str] = field(default_factory=list)  # "path: reason" for check files that failed to load

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


@dataclass
class OnnxExport:
    path: Path
    parity: ParityReport
    seconds: float


def default_onnx_path(checkpoint: str | Path) -> Path:
    """``<checkpoint folder>/engines/<checkpoint stem>.onnx``: where ``auto`` looks for an export."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / ENGINES_DIR / f"{checkpoint.stem}.onnx"


def compare_logits(reference: np.ndarray, candidate: np.ndarray, *, tolerance: float, inputs: str) -> ParityReport:
    """Max abs difference and top-1 agreement between two (N, classes) logit arrays."""
    if reference.shape != candidate.shape:
        raise CxrError(f"parity check: output shapes differ ({reference.shape} vs {candidate.shape})")
    diff = float(np.abs(reference.astype(np.float64) - candidate.astype(np.float64)).max()) if reference.size else 0.0
    agree = float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0
    return ParityReport(len(reference), inputs, diff, agree, tolerance)


def load_check_batch(
    sources: Iterable[str | Path], cfg: PreprocessCfg, *, limit: int = DEFAULT_CHECK_COUNT
) -> tuple[np.ndarray, list[str]]:
    """Up to ``limit`` films spread evenly over ``sources`` (files/folders), preprocessed with ``cfg``.

    Evenly spaced rather than the first ``limit`` so a class-per-folder tree contributes every class.
    Files that fail to load are skipped and returned as ``"path: reason"``.
    """
    files = list(iter_input_files(sources))
    if limit <= 0:
        raise CxrError(f"need at least one check image, not {limit}")
    order = _spread(len(files), limit)
    batch: list[np.ndarray] = []
    skipped: list[str] = []
    for i in order:
        if len(batch) >= limit:
            break
        try:
            batch.append(to_model_input(load_image(files[i], window=cfg.window), cfg))
        except ImageLoadError as exc:
            skipped.append(str(exc))
    if not batch:
        where = ", ".join(str(s) for s in sources) or "(nothing given)"
        raise CxrError(f"no loadable image among the check inputs {where}")
    return np.stack(batch), skipped


def _spread(n: int, k: int) -> list[int]:
    """Indices 0..n-1, the k evenly spaced ones first, then the rest (replacements for bad files)."""
    if n <= k:
        return list(range(n))
    first = sorted({int(round(j * (n - 1) / (k - 1))) for j in range(k)}) if k > 1 else [0]
    chosen = set(first)
    return first + [i for i in range(n) if i not in chosen]


def synthetic_batch(cfg: PreprocessCfg, n: int = 4, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal inputs, the fallback when no real films are given for the check."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, cfg.channels, cfg.input_size, cfg.input_size)).astype(np.float32)


def check_batch(cfg: PreprocessCfg, sources: Sequence[str | Path], limit: int) -> tuple[np.ndarray, str, list[str]]:
    """Real films from ``sources`` when given, else synthetic inputs: (batch, kind, skipped)."""
    if sources:
        batch, skipped = load_check_batch(sources, cfg, limit=limit)
        return batch, "real", skipped
    return synthetic_batch(cfg, min(limit, 4)), "synthetic", []


def ort_session(path: str | Path, *, threads: int | None = None, providers: Sequence[Any] = ("CPUExecutionProvider",)) -> Any:
    """An ONNX Runtime session with full graph optimisation (shared by the backend and the checks)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise CxrError(f"{path}: ONNX Runtime cannot load it ({_one_line(exc)})") from None


def run_ort_in_two_batches(session, batch: np.ndarray) -> np.ndarray:
    """Logits for ``batch`` run as batch 1 and batch N-1, so the check also proves the batch axis is dynamic."""
    name = session.get_inputs()[0].name
    parts = [batch[:1], batch[1:]] if len(batch) > 1 else [batch]
    return np.concatenate([session.run(None, {name: p})[0] for p in parts])


def export_onnx(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    check_images: Sequence[str | Path] = (),
    check_count: int = DEFAULT_CHECK_COUNT,
    tolerance: float = DEFAULT_TOLERANCE,
    opset: int = DEFAULT_OPSET,
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

    proto = _to_onnx_proto(model, card.preprocess, opset)
    _set_metadata(proto, _metadata(card, checkpoint))
    with torch.inference_mode():
        reference = model(torch.from_numpy(batch)).float().numpy()

    import onnx

    with atomic_path(out) as tmp:
        onnx.save_model(proto, str(tmp))
        got = run_ort_in_two_batches(ort_session(tmp), batch)
        report = compare_logits(reference, got, tolerance=tolerance, inputs=kind)
        report.skipped = skipped
        if not report.ok:
            raise ParityError(
                f"{checkpoint}: ONNX export failed the parity check: max abs logit difference "
                f"{report.max_abs_diff:.3g} > tolerance {tolerance:g} on {report.n_inputs} {kind} inputs; nothing written"
            )
    return OnnxExport(out, report, time.perf_counter() - start)


def _to_onnx_proto(model, cfg: PreprocessCfg, opset: int):
    """torch.export-based exporter (the default since torch 2.9; the TorchScript one is deprecated).

    The batch axis is a named dynamic dimension; the exporter's progress lines go nowhere, so
    stdout stays machine-readable.
    """
    import torch

    example = torch.zeros(2, cfg.channels, cfg.input_size, cfg.input_size)
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    return program.model_proto


def _metadata(card: ModelCard, checkpoint: Path) -> dict[str, str]:
    return {
        CARD_KEY: card.to_json(),
        SOURCE_SHA_KEY: file_sha256(checkpoint),
        SOURCE_NAME_KEY: checkpoint.name,
        VERSION_KEY: __version__,
        CREATED_KEY: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _set_metadata(proto: Any, values: dict[str, str]) -> None:
    """Replace our keys in ``metadata_props``, keeping any the exporter wrote."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    for key, value in [*kept, *values.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file as a dict."""
    import onnx

    path = Path(path)
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except FileNotFoundError:
        raise CxrError(f"{path}: ONNX file not found") from None
    except Exception as exc:  # protobuf DecodeError and friends
        raise CxrError(f"{path}: not a readable ONNX file ({_one_line(exc)})") from None
    return {p.key: p.value for p in proto.metadata_props}


def read_onnx_card(path: str | Path, metadata: dict[str, str] | None = None) -> ModelCard:
    """The model card embedded by :func:`export_onnx` (classes, task, preprocessing, provenance)."""
    meta = read_onnx_metadata(path) if metadata is None else metadata
    if CARD_KEY not in meta:
        raise CxrError(f"{path}: ONNX file without a cxrtool model card; export it with `cxrtool export --onnx`")
    try:
        return ModelCard.from_json(meta[CARD_KEY])
    except (ValueError, TypeError) as exc:
        raise CxrError(f"{path}: damaged cxrtool model card in the ONNX metadata ({_one_line(exc)})") from None


def exported_from(onnx_path: str | Path, source_sha256: str) -> bool:
    """True when ``onnx_path`` exists and records ``source_sha256`` as its source (not a stale export)."""
    if not Path(onnx_path).is_file():
        return False
    try:
        return read_onnx_metadata(onnx_path).get(SOURCE_SHA_KEY) == source_sha256
    except CxrError:
        return False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
