"""The TensorRT Python bindings cxrtool supports, and how it asks them for features.

Neutral ground shared by the engine build (:mod:`cxrtool.export.trt_build`) and the runtime
(:mod:`cxrtool.infer.trt_backend`), so neither package imports the other.

Supported: TensorRT 10 and 11 (``pip install tensorrt`` from PyPI gives the newest).  Both are
driven the same way, with explicit precision: the ONNX file carries the types (fp16 by conversion,
int8 as Q/DQ nodes) and the network is strongly typed.  10.x still builds weakly typed networks by
default and needs ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``; 11.x networks are always
strongly typed: the flag is still there but deprecated and ignored, and its builder no longer has
``BuilderFlag.FP16``/``INT8`` or the calibrator API.  Features are detected with ``hasattr``, never
by parsing version strings; an unknown major is refused.
"""

from __future__ import annotations

from typing import Any

from cxrtool.errors import CxrError

#: majors whose bindings this code was checked against (see docs/export.md)
SUPPORTED_MAJORS = (10, 11)


def import_tensorrt() -> Any:
    """``tensorrt`` 10 or 11, or a one-line :class:`CxrError` saying why not."""
    try:
        import tensorrt as trt
    except ImportError:
        raise CxrError(
            "TensorRT is not installed (pip install 'cxrtool[trt]'; TensorRT is on PyPI and needs a CUDA GPU)"
        ) from None
    except OSError as exc:  # the wheel is there but its CUDA libraries are not
        raise CxrError(f"TensorRT cannot load its libraries ({' '.join(str(exc).split())[:200]})") from None
    version = str(getattr(trt, "__version__", "0"))
    major = version.split(".")[0]
    if not major.isdigit() or int(major) not in SUPPORTED_MAJORS:
        supported = " and ".join(str(m) for m in SUPPORTED_MAJORS)
        raise CxrError(
            f"TensorRT {version} is not supported; "
            f"cxrtool supports TensorRT {supported} (pip install 'tensorrt>=10,<12')"
        )
    return trt


def cuda_index(device: str) -> int:
    """``cuda`` -> 0, ``cuda:1`` -> 1; anything else is a usage error."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise CxrError(f"TensorRT needs a CUDA device (cuda or cuda:N), not {device!r}")
    return int(index or 0)


def weakly_typed_default(trt: Any) -> bool:
    """True where the builder still has weak typing (10.x: ``BuilderFlag.FP16`` exists), so strong typing must be
    asked for.
    """
    return hasattr(getattr(trt, "BuilderFlag", None), "FP16")


def network_flags(trt: Any) -> int:
    """``create_network`` flags for a strongly typed network.

    10.x: ``1 << STRONGLY_TYPED``.  11.x: 0 -- every network is strongly typed and the flag, though
    still defined, is deprecated and ignored (TensorRT 11.0 Python API, ``NetworkDefinitionCreationFlag``).
    """
    if not weakly_typed_default(trt):
        return 0
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    if flag is None:
        raise CxrError(
            f"TensorRT {getattr(trt, '__version__', '?')} has weak typing but no STRONGLY_TYPED network flag; "
            "use TensorRT >= 10.1"
        )
    return 1 << int(flag)
