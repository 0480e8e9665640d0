"""Export a checkpoint for fast inference: ONNX (with the model card inside) and TensorRT engines.

:func:`export_model` is what ``cxrtool export`` calls: it validates every option first (so a bad
TensorRT flag fails in a second, not after the ONNX export), then exports and checks each step.
Importing this package loads no torch, onnx or TensorRT; each step imports its runtime lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtool.errors import CxrError

if TYPE_CHECKING:
    from cxrtool.export.onnx import OnnxExport
    from cxrtool.export.tensorrt import BatchProfile, EngineBuild


@dataclass
class ExportResult:
    onnx_path: Path
    onnx: OnnxExport | None  # None when an existing current export was reused
    engine: EngineBuild | None


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
) -> ExportResult:
    """Checkpoint -> ONNX (``onnx``) and/or ONNX -> TensorRT engine (``trt``), each parity-checked.

    ``model`` is a checkpoint, or an exported ONNX file when only ``trt`` is asked.  With ``trt`` on
    a checkpoint, a current export in ``engines/`` is reused unless ``onnx`` asks for a fresh one.
    Files go to ``out_dir`` (default: ``engines/`` next to a checkpoint, the ONNX file's folder).
    """
    from cxrtool.export import onnx as onnx_mod

    model = Path(model)
    step = on_step or (lambda _msg: None)
    if not (onnx or trt):
        raise CxrError("nothing to do: choose --onnx and/or --trt")
    if not model.is_file():
        raise CxrError(f"{model}: model file not found")
    suffix = model.suffix.lower()
    if suffix not in (".safetensors", ".onnx"):
        raise CxrError(f"{model}: export takes a cxrtool checkpoint (.safetensors) or, for --trt, an exported .onnx")
    if suffix == ".onnx" and onnx:
        raise CxrError(f"{model}: already ONNX; --onnx needs the .safetensors checkpoint")
    if trt:  # validate before the (slow) ONNX export
        from cxrtool.export import tensorrt as trt_mod

        profile = profile or trt_mod.BatchProfile()
        trt_mod.engine_precision(fp16=fp16, int8=int8, calib=calib)
        trt_mod.cuda_index(device)
        trt_mod.import_tensorrt()

    result = ExportResult(model, None, None)
    if suffix == ".safetensors":
        onnx_path = onnx_mod.default_onnx_path(model)
        if out_dir is not None:
            onnx_path = Path(out_dir) / onnx_path.name
        from cxrtool.models.checkpoint import file_sha256

        if onnx or not onnx_mod.exported_from(onnx_path, file_sha256(model)):
            step(f"exporting {model.name} to ONNX")
            result.onnx = onnx_mod.export_onnx(
                model,
                onnx_path,
                check_images=check_images,
                check_count=check_count,
                tolerance=onnx_mod.DEFAULT_TOLERANCE if tolerance is None else tolerance,
                opset=opset or onnx_mod.DEFAULT_OPSET,
            )
        result.onnx_path = onnx_path
    if trt:
        engine_path = trt_mod.default_engine_path(result.onnx_path)
        if out_dir is not None:
            engine_path = Path(out_dir) / engine_path.name
        step(f"building TensorRT engine from {result.onnx_path.name}")
        result.engine = trt_mod.build_engine(
            result.onnx_path,
            engine_path,
            fp16=fp16,
            int8=int8,
            calib=calib,
            profile=profile,
            device=device,
            check_images=check_images,
            check_count=check_count,
            tolerance=trt_tolerance,
        )
    return result
