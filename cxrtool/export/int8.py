"""ONNX export -> INT8 with NNCF post-training quantization, written only when held-out films agree.

Two outputs from the same recipe (``nncf.quantize``, symmetric ``PERFORMANCE`` preset, every
calibration film as one sample):

* ``fmt="openvino"``: NNCF on the OpenVINO model read from the ONNX file -> an IR pair
  ``engines/<stem>.int8.xml/.bin`` for the ``openvino`` backend (the fast CPU path);
* ``fmt="qdq-onnx"``: NNCF on the ONNX model -> a Q/DQ ONNX ``engines/<stem>.int8.onnx``, the
  explicit-quantization input TensorRT 10/11 build INT8 engines from (no implicit calibrator),
  with NNCF's UINT8 activation Q/DQ re-encoded as signed INT8 (:mod:`cxrtool.export.qdq`: TensorRT refuses UINT8).

The gate (:func:`compare_int8`) runs the quantized model *as written* on films held back from
calibration (:mod:`cxrtool.export.calib_films`) against ONNX Runtime fp32: top-1 agreement
>= :data:`MIN_AGREEMENT` and, when the films are labelled, macro-AUC (multiclass) or every
per-class AUC (multilabel) within :data:`MAX_AUC_DROP` of fp32.  Plain quantization is tried
first; when it fails, once more with the first convolution and the classifier kept in fp32 (an
ignored scope, the usual remedy for a CNN's most range-sensitive layers), then (IR only) with
``nncf.quantize_with_accuracy_control``, which reverts the layers that cost agreement with fp32 on
the *calibration* films.  If all fail, nothing is written and :class:`Int8CheckError` carries the
numbers.

Every output of the fp32 graph is kept, so the OOD ``features`` output (when the export has one)
survives quantization and is computed by the INT8 graph; the check records its cosine similarity
with fp32 on the held-out films.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrtool.errors import CxrError
from cxrtool.export.calib_films import (
    DEFAULT_CALIB_COUNT,
    CalibrationSet,
    calibration_set,
    iter_calibration_inputs,
    load_films,
)
from cxrtool.export.parity import ParityError
from cxrtool.export.progress import OnProgress, counter
from cxrtool.modelfile import (
    FEATURES_NAME,
    INT8_IR_SUFFIX,
    INT8_KEY,
    INT8_ONNX_SUFFIX,
    OUTPUT_NAME,
    ModelCard,
    default_int8_path,
    file_sha256,
    read_onnx_card,
    read_onnx_metadata,
)
from cxrtool.modelfile.write import set_ir_metadata, set_onnx_metadata
from cxrtool.task import Task
from cxrtool.train.metrics import auc_score

MIN_AGREEMENT = 0.99
MAX_AUC_DROP = 0.005
#: accuracy control's allowed agreement loss on the calibration films (the held-out gate still decides)
MAX_AC_DROP = 0.005
ACCURACY_CONTROL = "accuracy control"
FORMATS = {"openvino": INT8_IR_SUFFIX, "qdq-onnx": INT8_ONNX_SUFFIX}


class Int8CheckError(ParityError):
    """Quantization ran but the INT8 model failed the held-out check (nothing was written)."""

    def __init__(self, message: str, checks: list[Int8Check]):
        super().__init__(message)
        self.checks = checks


@dataclass
class Int8Check:
    """INT8 vs fp32 on the held-out films: the numbers the gate decides on."""

    attempt: str
    films: int
    top1_agreement: float
    auc_fp32: dict[str, float] | None = None  # per class; None without labels
    auc_int8: dict[str, float] | None = None
    macro_auc_fp32: float | None = None
    macro_auc_int8: float | None = None
    auc_drop: float | None = None  # macro (multiclass) or worst class (multilabel), fp32 - int8
    features_cosine_min: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        auc = (
            "AUC not checked (held-out films unlabelled)"
            if self.auc_drop is None
            else (f"macro-AUC {self.macro_auc_int8:.4f} vs fp32 {self.macro_auc_fp32:.4f} (drop {self.auc_drop:+.4f})")
        )
        return f"{self.attempt}: top-1 agreement {self.top1_agreement:.1%} on {self.films} held-out films, {auc}"


def _class_aucs(probs: np.ndarray, labels: np.ndarray, task: Task, names: Sequence[str]) -> dict[str, float]:
    """One-vs-rest AUC of every class that has both positives and negatives among the films."""
    truth = labels if task.multilabel else np.eye(len(names))[labels]
    aucs = {name: auc_score(probs[:, k], truth[:, k]) for k, name in enumerate(names)}
    return {name: auc for name, auc in aucs.items() if auc is not None}


def compare_int8(
    reference: np.ndarray,
    quantized: np.ndarray,
    labels: Sequence[Any] | None,
    card: ModelCard,
    *,
    attempt: str = "plain",
    min_agreement: float = MIN_AGREEMENT,
    max_auc_drop: float = MAX_AUC_DROP,
) -> Int8Check:
    """The gate: agreement with fp32 logits and the AUC drop on labelled films."""
    if reference.shape != quantized.shape or not len(reference):
        raise CxrError(f"INT8 check: output shapes {reference.shape} and {quantized.shape} (need the same, non-empty)")
    agree = float(np.mean(reference.argmax(1) == quantized.argmax(1)))
    check = Int8Check(attempt, len(reference), agree)
    if agree < min_agreement:
        check.failures.append(f"top-1 agreement {agree:.1%} < {min_agreement:.0%}")
    if labels is not None:
        y = np.asarray(labels)
        ref = _class_aucs(card.task.probs(reference), y, card.task, card.class_names)
        got = _class_aucs(card.task.probs(quantized), y, card.task, card.class_names)
        if ref:
            check.auc_fp32, check.auc_int8 = ref, got
            check.macro_auc_fp32 = float(np.mean(list(ref.values())))
            check.macro_auc_int8 = float(np.mean(list(got.values())))
            drops = {k: ref[k] - got[k] for k in ref}
            check.auc_drop = (
                max(drops.values()) if card.task.multilabel else check.macro_auc_fp32 - check.macro_auc_int8
            )
            if check.auc_drop > max_auc_drop:
                what = "worst per-class AUC" if card.task.multilabel else "macro-AUC"
                check.failures.append(f"{what} drop {check.auc_drop:.4f} > {max_auc_drop}")
    return check


def features_cosine(reference: np.ndarray, quantized: np.ndarray) -> float:
    """Smallest per-film cosine similarity between fp32 and INT8 feature vectors."""
    a = reference.reshape(len(reference), -1).astype(np.float64)
    b = quantized.reshape(len(quantized), -1).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)))


@dataclass
class Int8Export:
    path: Path
    check: Int8Check
    calibration: dict[str, Any]
    seconds: float
    tried: list[Int8Check] = field(default_factory=list)


class _Samples:
    """Re-iterable NNCF data source: NNCF walks the calibration films more than once.

    Each walk is reported as its own stage (``calibration films (ATTEMPT, pass K)``), counted per film.
    """

    def __init__(self, calib: CalibrationSet, card: ModelCard, as_dict: bool, on_progress: OnProgress | None = None):
        self.calib, self.card, self.as_dict, self.on_progress = calib, card, as_dict, on_progress
        self.skipped: list[str] = []
        self.used = 0
        self.attempt = ""
        self.passes = 0

    def __iter__(self):
        self.skipped.clear()
        self.used = 0
        self.passes += 1
        films = self.calib.calibration
        report = counter(self.on_progress, f"calibration films ({self.attempt}, pass {self.passes})", len(films))
        for x in iter_calibration_inputs(films, self.card.preprocess, self.skipped, report):
            self.used += 1
            yield {"input": x} if self.as_dict else x


def export_int8(
    onnx_path: str | Path,
    calib: str | Path,
    out: str | Path | None = None,
    *,
    fmt: str = "openvino",
    calib_count: int = DEFAULT_CALIB_COUNT,
    min_agreement: float = MIN_AGREEMENT,
    max_auc_drop: float = MAX_AUC_DROP,
    on_step: Callable[[str], None] | None = None,
    on_progress: OnProgress | None = None,
) -> Int8Export:
    """Quantize an exported ONNX file with NNCF and write it only if it passes the held-out check.

    Parameters
    ----------
    onnx_path:
        A file written by :func:`cxrtool.export.onnx.export_onnx` (card and source hash inside).
    calib:
        Folder of films or a manifest; split into calibration and held-out films.
    out:
        Output path; default :func:`cxrtool.modelfile.default_int8_path` (``.int8.xml`` / ``.int8.onnx``).
    fmt:
        ``openvino`` (IR for the CPU) or ``qdq-onnx`` (Q/DQ ONNX for TensorRT).
    calib_count:
        At most this many calibration films (spread over the set).
    min_agreement, max_auc_drop:
        The gate's bounds.
    on_step:
        A message as each step starts.
    on_progress:
        Films done per counted stage (:class:`cxrtool.export.progress.ExportProgress`): held-out films
        loaded, the fp32 reference, every NNCF walk over the calibration films, each INT8 check.

    Returns
    -------
    Int8Export
        Written path, the passing check, the calibration record and the time taken.

    Raises
    ------
    Int8CheckError
        Every attempt failed the check; nothing was written, the numbers are in the message.
    CxrError
        Unusable ONNX file or calibration source.
    """
    import nncf

    if fmt not in FORMATS:
        raise CxrError(f"INT8 format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    step = on_step or (lambda _m: None)
    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    meta = read_onnx_metadata(onnx_path)
    card = read_onnx_card(onnx_path, meta)
    out = Path(out) if out is not None else default_int8_path(onnx_path, FORMATS[fmt])
    cs = calibration_set(calib, card, limit=calib_count)
    step(f"loading {len(cs.holdout)} held-out films")
    loaded = counter(on_progress, "held-out films loaded", len(cs.holdout))
    holdout, kept, cs.skipped = load_films(cs.holdout, card.preprocess, loaded)
    if not len(holdout):
        raise CxrError(f"{calib}: none of the {len(cs.holdout)} held-out films loads; cannot check INT8")
    labels = [cs.labels[i] for i in kept] if cs.labels is not None else None
    step(f"fp32 reference on {len(holdout)} held-out films")
    reference = _ort_outputs(onnx_path, holdout, counter(on_progress, "fp32 reference", len(holdout)))

    samples = _Samples(cs, card, as_dict=fmt == "qdq-onnx", on_progress=on_progress)
    dataset = nncf.Dataset(samples)
    tried: list[Int8Check] = []
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out.parent if out.parent.is_dir() else None) as tmp:
        tmp_out = Path(tmp) / out.name
        for attempt, scope in _attempts(onnx_path, fmt):
            step(f"NNCF quantization ({attempt}) on {len(cs.calibration)} calibration films")
            validation = _calibration_targets(onnx_path, cs, card, on_progress) if attempt == ACCURACY_CONTROL else None
            samples.attempt, samples.passes = attempt, 0
            with _nncf_off_stdout():
                _quantize_to(tmp_out, onnx_path, fmt, dataset, len(cs.calibration), scope, validation, on_progress)
            if not samples.used:
                raise CxrError(f"{calib}: none of the {len(cs.calibration)} calibration films loads")
            step(f"INT8 check ({attempt}) on {len(holdout)} held-out films")
            got = _int8_outputs(tmp_out, fmt, holdout, counter(on_progress, f"INT8 check ({attempt})", len(holdout)))
            check = compare_int8(
                reference[OUTPUT_NAME],
                got[OUTPUT_NAME],
                labels,
                card,
                attempt=attempt,
                min_agreement=min_agreement,
                max_auc_drop=max_auc_drop,
            )
            _check_outputs(reference, got, check)
            tried.append(check)
            if check.ok:
                record = {
                    "precision": "int8",
                    "format": fmt,
                    "quantizer": f"nncf {nncf.__version__}",
                    "calibration": {**cs.describe(), "skipped": len(samples.skipped)},
                    "check": asdict(check),
                    "gate": {"min_top1_agreement": min_agreement, "max_auc_drop": max_auc_drop},
                    "source_onnx": onnx_path.name,
                    "source_onnx_sha256": file_sha256(onnx_path),
                    "outputs": sorted(reference),
                }
                _write_metadata(tmp_out, fmt, {**meta, INT8_KEY: json.dumps(record, sort_keys=True)})
                _move_into_place(tmp_out, out, fmt)
                return Int8Export(out, check, record["calibration"], time.perf_counter() - start, tried)
    lines = "; ".join(f"{c.summary()} -> {', '.join(c.failures)}" for c in tried)
    raise Int8CheckError(f"{onnx_path}: INT8 model failed the held-out check, nothing written: {lines}", tried)


def _attempts(onnx_path: Path, fmt: str) -> list[tuple[str, Any]]:
    """Plain quantization, then with the first convolution and the classifier kept in fp32.

    The ignored scope names nodes of the graph NNCF quantizes: OpenVINO's friendly names for the
    IR path (they differ from the ONNX node names), the ONNX node names for Q/DQ ONNX.
    """
    import nncf

    if fmt == "openvino":
        import openvino as ov

        ops = [
            (op.get_type_name(), op.get_friendly_name())
            for op in ov.Core().read_model(str(onnx_path)).get_ordered_ops()
        ]
        convs = [name for kind, name in ops if kind == "Convolution"]
        heads = [name for kind, name in ops if kind == "MatMul"]
    else:
        import onnx

        graph = onnx.load_model(str(onnx_path), load_external_data=False).graph
        convs = [n.name for n in graph.node if n.op_type == "Conv"]
        heads = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    keep = [*convs[:1], *heads[-1:]]
    attempts: list[tuple[str, Any]] = [("plain", None)]
    if keep:
        attempts.append(("fp32 first conv + classifier", nncf.IgnoredScope(names=keep)))
    if fmt == "openvino":
        attempts.append((ACCURACY_CONTROL, None))
    return attempts


def _calibration_targets(
    onnx_path: Path, calib: CalibrationSet, card: ModelCard, on_progress: OnProgress | None = None
) -> list[tuple[np.ndarray, int]]:
    """(input, fp32 top-1) per calibration film: accuracy control's validation data, never the held-out films."""
    report = counter(on_progress, "accuracy-control targets", len(calib.calibration))
    inputs = list(iter_calibration_inputs(calib.calibration, card.preprocess, [], report))
    top1 = _ort_outputs(onnx_path, np.concatenate(inputs))[OUTPUT_NAME].argmax(1)
    return [(x, int(y)) for x, y in zip(inputs, top1)]


def _quantize_to(
    path: Path,
    onnx_path: Path,
    fmt: str,
    dataset: Any,
    n: int,
    scope: Any,
    validation: list | None = None,
    on_progress: OnProgress | None = None,
) -> None:
    """``nncf.quantize``; with ``validation``, ``nncf.quantize_with_accuracy_control`` keeping top-1 agreement
    with fp32 on the calibration films within :data:`MAX_AC_DROP` (it reverts the most sensitive layers to fp32)."""
    import nncf

    kwargs = dict(preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=n, ignored_scope=scope)
    if fmt == "openvino":
        import openvino as ov

        model = ov.Core().read_model(str(onnx_path))
        if validation is not None:
            quantized = nncf.quantize_with_accuracy_control(
                model,
                dataset,
                nncf.Dataset(validation),
                _Agreement(len(validation), on_progress),
                max_drop=MAX_AC_DROP,
                target_device=nncf.TargetDevice.CPU,
                preset=kwargs["preset"],
                subset_size=n,
            )
        else:
            quantized = nncf.quantize(model, dataset, target_device=nncf.TargetDevice.CPU, **kwargs)
        ov.save_model(quantized, str(path), compress_to_fp16=False)
    else:
        import onnx

        from cxrtool.export.qdq import to_signed_int8

        model = onnx.load_model(str(onnx_path))
        quantized = nncf.quantize(model, dataset, **kwargs)
        to_signed_int8(quantized, onnx_path)  # TensorRT parses INT8 Q/DQ only; the gate checks the file as re-encoded
        onnx.save_model(quantized, str(path))


@contextlib.contextmanager
def _nncf_off_stdout() -> Iterator[None]:
    """Keep the caller's stdout machine-readable while NNCF runs: NNCF's log, written to stdout at INFO, goes
    to stderr from WARNING up.  (Its progress bars draw on Rich's global console; the CLI mutes that one.)"""
    handlers = [h for h in logging.getLogger("nncf").handlers if type(h) is logging.StreamHandler]
    saved = [(h, h.stream, h.level) for h in handlers]
    try:
        for h in handlers:
            h.setStream(sys.stderr)
            h.setLevel(max(h.level, logging.WARNING))
        yield
    finally:
        for h, stream, level in saved:
            h.setStream(stream)
            h.setLevel(level)


class _Agreement:
    """Accuracy control's metric: top-1 agreement with the fp32 decisions, per film and overall.

    NNCF calls it on the whole validation set once per model it validates (fp32, quantized, each candidate with
    layers reverted), and on single films to probe the metric's kind or to rank layers; each whole-set call is reported
    as a stage ``accuracy-control validation (run K)`` from its second film on, single-film calls are not.
    """

    def __init__(self, films: int, on_progress: OnProgress | None = None):
        self.films, self.on_progress, self.runs = films, on_progress, 0

    def __call__(self, compiled: Any, items: Any) -> tuple[float, list[float]]:
        port = next((o for o in compiled.outputs if OUTPUT_NAME in o.get_names()), compiled.output(0))
        hits: list[float] = []
        report = None
        for x, y in items:
            hits.append(float(np.argmax(compiled(x)[port]) == y))
            if len(hits) == 2:
                self.runs += 1
                report = counter(self.on_progress, f"accuracy-control validation (run {self.runs})", self.films)
            if report is not None:
                report(len(hits))
        return float(np.mean(hits)), hits


#: films per ONNX Runtime / OpenVINO call in the checks (and per progress report)
CHECK_BATCH = 16


def _ort_outputs(
    onnx_path: Path, batch: np.ndarray, on_films: Callable[[int], None] = lambda _done: None
) -> dict[str, np.ndarray]:
    """Every output of an ONNX file on ``batch``, :data:`CHECK_BATCH` films a call, ``on_films(done)`` after each."""
    from cxrtool.runtimes.onnxrt import ort_session

    session = ort_session(onnx_path)
    names = [o.name for o in session.get_outputs()]
    parts = []
    for i in range(0, len(batch), CHECK_BATCH):
        parts.append(session.run(None, {session.get_inputs()[0].name: batch[i : i + CHECK_BATCH]}))
        on_films(min(i + CHECK_BATCH, len(batch)))
    return {name: np.concatenate([p[k] for p in parts]) for k, name in enumerate(names)}


def _int8_outputs(
    path: Path, fmt: str, batch: np.ndarray, on_films: Callable[[int], None] = lambda _done: None
) -> dict[str, np.ndarray]:
    """The written INT8 file's outputs, run as inference will run it (OpenVINO CPU / ONNX Runtime)."""
    if fmt == "qdq-onnx":
        return _ort_outputs(path, batch, on_films)
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    request = compiled.create_infer_request()
    parts = []
    for i in range(0, len(batch), CHECK_BATCH):
        result = request.infer({0: batch[i : i + CHECK_BATCH]})
        parts.append({o.get_any_name(): result[o].copy() for o in compiled.outputs})
        on_films(min(i + CHECK_BATCH, len(batch)))
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def _check_outputs(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], check: Int8Check) -> None:
    """Every fp32 output must still be there; the OOD features are compared by cosine similarity."""
    missing = sorted(set(reference) - set(got))
    if missing:
        check.failures.append(f"outputs lost in quantization: {', '.join(missing)}")
    if FEATURES_NAME in reference and FEATURES_NAME in got:
        check.features_cosine_min = features_cosine(reference[FEATURES_NAME], got[FEATURES_NAME])


def _write_metadata(path: Path, fmt: str, values: dict[str, str]) -> None:
    """The ONNX export's metadata (card, source checkpoint hash ...) plus the INT8 record, in the file itself."""
    if fmt == "qdq-onnx":
        import onnx

        proto = onnx.load_model(str(path))
        set_onnx_metadata(proto, values)
        onnx.save_model(proto, str(path))
        return
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    set_ir_metadata(model, values)
    tmp = path.with_name("meta-" + path.name)
    ov.save_model(model, str(tmp), compress_to_fp16=False)
    del model
    tmp.replace(path)
    tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))


def _move_into_place(tmp: Path, out: Path, fmt: str) -> None:
    """Rename into ``out`` (an IR's ``.bin`` first: the ``.xml`` appearing means the pair is complete)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "openvino":
        shutil.move(str(tmp.with_suffix(".bin")), str(out.with_suffix(".bin")))
    shutil.move(str(tmp), str(out))
