"""What ``cxrtool export`` is asked to do, checked before any slow step: ONNX and TensorRT parity bounds, precisions.

Nothing here imports numpy, onnx or torch, so ``cxrtool export --help`` reads these defaults cheaply.
"""

from __future__ import annotations

from pathlib import Path

from cxrtool.errors import CxrError

ONNX_OPSET = 18
#: Max abs logit difference allowed between torch and ONNX Runtime, both fp32.  Kernels that only
#: reorder sums differ by ~1e-6 relative (seen: <1e-5 on DenseNet121); a gap of 1e-3 means an op
#: was translated with different semantics, not round-off, while still far below any margin that
#: decides a prediction.
ONNX_TOLERANCE = 1e-3
#: films (or synthetic inputs) every parity check compares
CHECK_COUNT = 16

PRECISIONS = ("fp32", "fp16", "int8")
#: Max abs logit difference allowed against ONNX Runtime fp32 on the same films.  fp32 engines may
#: use TF32 (10-bit mantissa), fp16 has 11 bits, INT8 is checked against fp32 by its own held-out
#: gate first (cxrtool.export.int8), so its engine bound only has to catch a broken build.  NOT
#: verified on a GPU here (docs/export.md).
TRT_TOLERANCE = {"fp32": 1e-2, "fp16": 1e-1, "int8": 0.5}


def engine_precision(*, fp16: bool, int8: bool, calib: str | Path | None) -> str:
    """Validate the precision flags and name the result (``fp32``, ``fp16`` or ``int8``).

    INT8 engines are built from a Q/DQ ONNX made by NNCF on ``calib`` (explicit quantization, the
    only INT8 path TensorRT 11 has); fp16 and int8 are separate precisions, not a mix.
    """
    if fp16 and int8:
        raise CxrError(
            "choose one TensorRT precision: --fp16 or --int8 (an INT8 engine runs what its Q/DQ ONNX leaves "
            "unquantized in that file's own types)"
        )
    if int8 and calib is None:
        raise CxrError(
            "--int8 needs --calib DIR|MANIFEST: films to calibrate on (a quarter is held back to check the result)"
        )
    if calib is not None and not int8:
        raise CxrError("--calib is only used with --int8")
    if calib is not None and not Path(calib).exists():
        raise CxrError(f"{calib}: calibration folder or manifest not found")
    return "int8" if int8 else "fp16" if fp16 else "fp32"


def default_tolerance(precision: str) -> float:
    return TRT_TOLERANCE[precision]
