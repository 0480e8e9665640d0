"""``cxrtool export`` end to end: make each file, then prove it with a runtime before it counts.

The steps that only *write* model files live in :mod:`cxrtool.export` (ONNX, NNCF INT8, the
TensorRT build); the check of a TensorRT engine needs the TensorRT *runtime*, which lives on the
infer side (:mod:`cxrtool.infer.trt_backend`).  This module is the one place that uses both, so the
export package never imports ``cxrtool.infer``.

Order: every option is validated first (a bad TensorRT flag fails in a second, not after the ONNX
export), then ONNX (reused when a current one exists and none was asked for), then INT8 (NNCF; an
OpenVINO IR for the CPU, or the Q/DQ ONNX a TensorRT INT8 engine is built from), then the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrtool.errors import CxrError
from cxrtool.export.parity import ParityError, ParityReport, check_batch, compare_logits
from cxrtool.export.progress import OnProgress
from cxrtool.modelfile import (
    SOURCE_SHA_KEY,
    BatchProfile,
    EngineSidecar,
    default_engine_path,
    default_onnx_path,
    exported_from,
    file_sha256,
    read_onnx_card,
    read_onnx_metadata,
    write_sidecar,
)


@dataclass
class EngineBuild:
    path: Path
    sidecar: EngineSidecar
    parity: ParityReport
    seconds: float


@dataclass
class ExportResult:
    onnx_path: Path
    onnx: object | None = None  # cxrtool.export.onnx.OnnxExport; None when a current export was reused
    int8: object | None = None  # cxrtool.export.int8.Int8Export
    engine: EngineBuild | None = None


def export_model(
    model: str | Path,
    *,
    onnx: bool = True,
    trt: bool = False,
    out_dir: str | Path | None = None,
    check_images: Sequence[str | Path] = (),
    check_count: int = 16,
    tolerance: float | None = None,
    opset: int | None = None,
    fp16: bool = False,
    int8: bool = False,
    calib: str | Path | None = None,
    profile: BatchProfile | None = None,
    device: str = "cuda",
    trt_tolerance: float | None = None,
    on_step: Callable[[str], None] | None = None,
    on_progress: OnProgress | None = None,
) -> ExportResult:
    """Checkpoint -> ONNX (``onnx``), -> INT8 (``int8`` + ``calib``), -> TensorRT engine (``trt``); each checked.

    ``model`` is a checkpoint, or an exported ONNX file when ONNX is not asked.  Without ``trt``,
    ``int8`` writes an OpenVINO IR (``engines/<stem>.int8.xml``); with it, a Q/DQ ONNX
    (``engines/<stem>.int8.onnx``) and the engine built from it.  ``on_step`` gets a message as each step
    starts, ``on_progress`` the film counts of the INT8 step (:func:`cxrtool.export.int8.export_int8`); the ONNX
    parity check (at most ``check_count`` films) and the TensorRT build are single steps.
    """
    from cxrtool.export import onnx as onnx_mod
    from cxrtool.export.options import ONNX_OPSET, ONNX_TOLERANCE, engine_precision

    model = Path(model)
    step = on_step or (lambda _msg: None)
    if fp16 and not trt:
        raise CxrError(
            "--fp16 is a TensorRT precision; add --trt (on the CPU, --int8 or OpenVINO bf16 are the fast paths)"
        )
    if not (onnx or trt or int8):
        raise CxrError("nothing to do: choose --onnx, --int8 --calib and/or --trt")
    if not model.is_file():
        raise CxrError(f"{model}: model file not found")
    suffix = model.suffix.lower()
    if suffix not in (".safetensors", ".onnx"):
        raise CxrError(
            f"{model}: export takes a cxrtool checkpoint (.safetensors) or, for --trt/--int8, an exported .onnx"
        )
    if suffix == ".onnx" and onnx:
        raise CxrError(f"{model}: already ONNX; --onnx needs the .safetensors checkpoint")
    precision = engine_precision(fp16=fp16, int8=int8, calib=calib)
    if int8 and calib is not None:  # a bad --calib is refused before the (slow) ONNX export, not after it
        from cxrtool.export.calib_films import calibration_set
        from cxrtool.modelfile import read_any_card

        calibration_set(calib, read_any_card(model))
    if trt:  # validate before the (slow) ONNX export
        from cxrtool.runtimes.trt_runner import cuda_problem
        from cxrtool.runtimes.trtlib import cuda_index

        cuda_index(device)
        problem = cuda_problem(device)
        if problem:
            raise CxrError(f"cannot build a TensorRT engine here: {problem}")

    result = ExportResult(model)
    if suffix == ".safetensors":
        onnx_path = default_onnx_path(model)
        if out_dir is not None:
            onnx_path = Path(out_dir) / onnx_path.name
        if onnx or not exported_from(onnx_path, file_sha256(model)):
            step(f"exporting {model.name} to ONNX")
            result.onnx = onnx_mod.export_onnx(
                model,
                onnx_path,
                check_images=check_images,
                check_count=check_count,
                tolerance=ONNX_TOLERANCE if tolerance is None else tolerance,
                opset=opset or ONNX_OPSET,
            )
        result.onnx_path = onnx_path
    engine_source = result.onnx_path
    if int8:
        from cxrtool.export.int8 import export_int8

        fmt = "qdq-onnx" if trt else "openvino"
        result.int8 = export_int8(result.onnx_path, calib, fmt=fmt, on_step=step, on_progress=on_progress)
        engine_source = result.int8.path
    if trt:
        engine_path = default_engine_path(result.onnx_path)
        if out_dir is not None:
            engine_path = Path(out_dir) / engine_path.name
        step(f"building a TensorRT {precision} engine from {engine_source.name}")
        result.engine = build_engine(
            engine_source,
            engine_path,
            precision=precision,
            profile=profile or BatchProfile(),
            device=device,
            check_images=check_images,
            check_count=check_count,
            tolerance=trt_tolerance,
            reference_onnx=result.onnx_path,
        )
    return result


def build_engine(
    onnx_path: str | Path,
    out: str | Path | None = None,
    *,
    precision: str = "fp32",
    profile: BatchProfile = BatchProfile(),
    device: str = "cuda",
    workspace_gib: float = 4.0,
    check_images: Sequence[str | Path] = (),
    check_count: int = 16,
    tolerance: float | None = None,
    reference_onnx: str | Path | None = None,
) -> EngineBuild:
    """Build a TensorRT engine, check it against ONNX Runtime fp32 on the same films, then write it with its sidecar.

    Parameters
    ----------
    onnx_path:
        The fp32 export (``fp32``/``fp16``) or its Q/DQ INT8 ONNX (``int8``).
    out:
        Engine path; default :func:`cxrtool.modelfile.default_engine_path` of ``reference_onnx``.
    precision:
        ``fp32``, ``fp16`` or ``int8`` (:mod:`cxrtool.export.trt_build`).
    profile, device, workspace_gib:
        Optimisation profile batch sizes, ``cuda[:N]``, builder workspace.
    check_images, check_count, tolerance:
        Parity films (seeded noise without them) and the largest max-abs logit difference allowed
        (default :data:`cxrtool.export.options.TRT_TOLERANCE`).
    reference_onnx:
        The fp32 ONNX the engine is compared with (default ``onnx_path``).

    Returns
    -------
    EngineBuild

    Raises
    ------
    CxrError
        TensorRT/CUDA unusable, parse/build failure; :class:`ParityError` above the tolerance
        (nothing written).
    """
    from cxrtool.export.options import default_tolerance
    from cxrtool.export.trt_build import build_serialized, precision_onnx
    from cxrtool.fsutil import atomic_path
    from cxrtool.runtimes.onnxrt import ort_session, run_ort_in_two_batches
    from cxrtool.runtimes.trt_runner import TrtRunner, current_gpu, device_context
    from cxrtool.runtimes.trtlib import cuda_index, import_tensorrt

    start = time.perf_counter()
    onnx_path = Path(onnx_path)
    reference_onnx = Path(reference_onnx) if reference_onnx is not None else onnx_path
    tolerance = default_tolerance(precision) if tolerance is None else tolerance
    index = cuda_index(device)
    meta = read_onnx_metadata(onnx_path)
    card = read_onnx_card(onnx_path, meta)
    out = Path(out) if out is not None else default_engine_path(reference_onnx)
    batch, kind, skipped = check_batch(card.preprocess, list(check_images), check_count)

    trt = import_tensorrt()
    gpu_name, capability = current_gpu(index)
    model_bytes = precision_onnx(onnx_path, precision)
    with device_context(index):  # the builder builds for the current device: cuda:N's, not device 0's
        built = build_serialized(trt, model_bytes, onnx_path, card.preprocess, profile, workspace_gib=workspace_gib)
    runner = TrtRunner(built.plan, index)
    got = runner.infer(batch)
    reference = run_ort_in_two_batches(ort_session(reference_onnx), batch)
    if not np.isfinite(got).all():
        raise ParityError(
            f"{out}: the TensorRT {precision} engine returns NaN/inf on the check inputs; nothing written"
        )
    report = compare_logits(reference, got, tolerance=tolerance, inputs=kind)
    report.skipped = skipped
    if not report.ok:
        raise ParityError(
            f"{out}: TensorRT {precision} engine failed the parity check against ONNX Runtime fp32: max abs logit "
            f"difference {report.max_abs_diff:.3g} > tolerance {tolerance:g} (top-1 agreement "
            f"{report.top1_agreement:.1%}) on {report.n_inputs} {kind} inputs; nothing written"
        )
    with atomic_path(out) as tmp:
        tmp.write_bytes(built.plan)
        sidecar = EngineSidecar(
            card=card,
            precision=precision,
            profile=profile,
            input_name=built.input_name,
            output_name=runner.logits,
            tensorrt_version=built.tensorrt_version,
            gpu_name=gpu_name,
            compute_capability=capability,
            engine_sha256=file_sha256(tmp),
            source_onnx=onnx_path.name,
            source_onnx_sha256=file_sha256(onnx_path),
            source_checkpoint_sha256=meta.get(SOURCE_SHA_KEY, ""),
            calibration={"qdq_onnx": onnx_path.name} if precision == "int8" else {},
            parity={
                "max_abs_diff": report.max_abs_diff,
                "top1_agreement": report.top1_agreement,
                "inputs": f"{report.n_inputs} {kind}",
            },
        )
        write_sidecar(out, sidecar)
    return EngineBuild(out, sidecar, report, time.perf_counter() - start)
