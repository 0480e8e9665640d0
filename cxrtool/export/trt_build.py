"""ONNX -> serialised TensorRT engine, one design for TensorRT 10 and 11: explicit precision.

The ONNX file decides every tensor's type and the network is strongly typed
(:func:`cxrtool.runtimes.trtlib.network_flags`):

* ``fp32``: the export as it is;
* ``fp16``: the export converted with onnxconverter-common's ``convert_float_to_float16``
  (``keep_io_types=True``: the engine still takes and returns float32, so the runtime's buffers
  do not change);
* ``int8``: the Q/DQ ONNX that :func:`cxrtool.export.int8.export_int8` writes with NNCF
  (``fmt="qdq-onnx"``), already checked on held-out films.

No builder precision flag and no calibrator is used: ``BuilderFlag.FP16``/``INT8``,
``int8_calibrator`` and ``set_calibration_profile`` are gone in TensorRT 11.  This module needs
``tensorrt`` only; the caller makes the target device's context current around
:func:`build_serialized` (the builder builds for whichever device is current, as ``trtexec
--device=N`` selects it first).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError
from cxrtool.export.qdq import QDQ_OPS, qdq_zero_point_types
from cxrtool.modelfile import BatchProfile
from cxrtool.runtimes.trtlib import network_flags


@dataclass
class SerializedEngine:
    plan: bytes
    input_name: str
    output_names: list[str]
    tensorrt_version: str
    strongly_typed: str  # "flag" (10.x) or "always" (11.x)


def precision_onnx(onnx_path: Path, precision: str) -> bytes:
    """The ONNX bytes that carry ``precision`` explicitly (see the module docstring)."""
    import onnx

    model = onnx.load_model(str(onnx_path))
    has_qdq = any(n.op_type in QDQ_OPS for n in model.graph.node)
    if precision == "int8":
        if not has_qdq:
            raise CxrError(
                f"{onnx_path}: no QuantizeLinear/DequantizeLinear nodes; "
                "an INT8 engine needs the Q/DQ ONNX from `export --int8`"
            )
        unsigned = sorted({kind for kind in qdq_zero_point_types(model) if kind != "INT8"})
        if unsigned:  # a Q/DQ ONNX written before cxrtool re-encoded NNCF's UINT8 quantizers
            raise CxrError(
                f"{onnx_path}: has {'/'.join(unsigned)} Q/DQ nodes; "
                "TensorRT takes INT8 only: run `export --trt --int8` again"
            )
        return model.SerializeToString()
    if has_qdq:
        raise CxrError(
            f"{onnx_path}: is a Q/DQ (INT8) ONNX; build it with --int8, or give the fp32 export for {precision}"
        )
    if precision == "fp16":
        from onnxconverter_common import float16

        model = float16.convert_float_to_float16(model, keep_io_types=True)
    return model.SerializeToString()


def build_serialized(
    trt: Any, onnx_bytes: bytes, source: Path, cfg: PreprocessCfg, profile: BatchProfile, *, workspace_gib: float = 4.0
) -> SerializedEngine:
    """Parse, one optimisation profile, strongly typed network, ``build_serialized_network``.

    Raises
    ------
    CxrError
        Parser errors (all of them, one line), an empty build.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = (
            "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors))
            or "no error recorded"
        )
        raise CxrError(f"{source}: TensorRT's ONNX parser failed: {errors}")
    if network.num_inputs != 1:
        raise CxrError(f"{source}: expected one input, the network has {network.num_inputs}")
    input_name = network.get_input(0).name
    outputs = [network.get_output(i).name for i in range(network.num_outputs)]

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    sample = (cfg.channels, cfg.input_size, cfg.input_size)
    shapes = builder.create_optimization_profile()
    try:
        shapes.set_shape(input_name, (profile.min, *sample), (profile.opt, *sample), (profile.max, *sample))
    except RuntimeError as exc:  # the bindings raise when min/opt/max do not nest
        raise CxrError(f"{source}: TensorRT refused the optimisation profile {profile}: {exc}") from None
    if config.add_optimization_profile(shapes) < 0:
        raise CxrError(f"{source}: TensorRT refused the optimisation profile {profile}")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CxrError(f"{source}: TensorRT could not build the engine (see the TensorRT log above)")
    return SerializedEngine(bytes(plan), input_name, outputs, str(trt.__version__), "flag" if flags else "always")
