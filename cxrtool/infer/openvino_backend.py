"""OpenVINO backend: the exported ONNX file on the CPU, in bf16 where the CPU has it.

On AMX/AVX512-BF16 CPUs bf16 inference precision gives ~3-4x ONNX Runtime fp32 on DenseNet121
(docs/export.md).  ``precision``: ``auto`` asks for bf16 only when the CPU lists BF16 in
``OPTIMIZATION_CAPABILITIES`` (OpenVINO would otherwise quietly run f32 anyway), ``f32`` forces
full precision, ``bf16`` insists and fails on a CPU without it.  The precision that actually ran
is read back from the compiled model and recorded by :meth:`describe`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from cxrtool.errors import CxrError
from cxrtool.infer.backends import Backend
from cxrtool.modelfile import FEATURES_NAME, IR_SUFFIX, ONNX_SUFFIX, OUTPUT_NAME, ModelCard
from cxrtool.modelfile.loaded import LoadedModel

PRECISIONS = ("auto", "bf16", "f32")
HINTS = ("latency", "throughput")


def cpu_supports_bf16(core: Any) -> bool:
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def compile_config(precision: str, hint: str, threads: int | None, *, bf16_supported: bool) -> dict[str, Any]:
    """OpenVINO CPU properties for the requested precision / performance hint / thread count."""
    if precision not in PRECISIONS:
        raise CxrError(f"OpenVINO precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if hint not in HINTS:
        raise CxrError(f"OpenVINO hint must be one of {', '.join(HINTS)}, not {hint!r}")
    if precision == "bf16" and not bf16_supported:
        raise CxrError("this CPU has no bf16 support (OpenVINO lists no BF16 capability); use precision f32 or auto")
    use_bf16 = precision == "bf16" or (precision == "auto" and bf16_supported)
    config: dict[str, Any] = {
        "INFERENCE_PRECISION_HINT": "bf16" if use_bf16 else "f32",
        "PERFORMANCE_HINT": hint.upper(),
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


class OpenVINOBackend(Backend):
    name = "openvino"
    #: ``.xml``: the INT8 IR written by ``cxrtool export --int8`` (card and INT8 record in its rt_info)
    suffixes = (ONNX_SUFFIX, IR_SUFFIX)

    def __init__(
        self,
        path: Path,
        card: ModelCard,
        device: str,
        compiled: Any,
        config: dict[str, Any],
        int8: dict[str, Any] | None = None,
    ):
        super().__init__(path, card, device)
        self.compiled = compiled
        self.config = config
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what really runs
        #: non-empty for an INT8 IR: its precision, calibration fingerprint and held-out check
        self.int8 = int8 or {}
        if self.int8:
            self.precision = "int8"  # quantized layers run int8; the rest at the hint above
        outputs = {name: port for port in compiled.outputs for name in port.get_names()}
        self._output = outputs.get(OUTPUT_NAME, compiled.output(0))
        self._features = outputs.get(FEATURES_NAME)
        self._request = compiled.create_infer_request()
        self._parallel = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._queue = None
        if config["PERFORMANCE_HINT"] == "THROUGHPUT" and self._parallel > 1:
            import openvino as ov

            self._queue = ov.AsyncInferQueue(compiled, self._parallel)

    @classmethod
    def is_available(cls, device: str) -> bool:
        return device == "cpu" and importlib.util.find_spec("openvino") is not None

    @classmethod
    def load(
        cls,
        model: LoadedModel,
        *,
        device: str = "cpu",
        precision: str = "auto",
        hint: str = "latency",
        threads: int | None = None,
        **options: Any,
    ) -> OpenVINOBackend:
        """Options: ``precision`` (auto|bf16|f32), ``hint`` (latency|throughput), ``threads``.  Others are ignored."""
        import openvino as ov

        if device != "cpu":
            raise CxrError(f"the openvino backend runs on the CPU here, not {device}")
        path = model.path
        core = ov.Core()
        config = compile_config(precision, hint, threads, bf16_supported=cpu_supports_bf16(core))
        is_ir = model.suffix == IR_SUFFIX
        weights = model.weights if is_ir else b""  # an IR's .bin; an ONNX file carries its weights
        try:
            compiled = core.compile_model(core.read_model(model.data, weights), "CPU", config)
        except RuntimeError as exc:
            raise CxrError(f"{path}: OpenVINO cannot compile it ({' '.join(str(exc).split())[:300]})") from None
        return cls(path, model.card, device, compiled, config, model.int8 if is_ir else None)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._infer(batch, [self._output])[0]

    def run_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self._features is None:
            return self.run(batch), None
        logits, features = self._infer(batch, [self._output, self._features])
        return logits, features

    def _infer(self, batch: np.ndarray, ports: list[Any]) -> list[np.ndarray]:
        """The requested outputs for ``batch`` (copies: OpenVINO reuses its output buffers)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self._queue is None or len(x) < 2:
            result = self._request.infer({0: x})
            return [np.array(result[p]) for p in ports]
        # THROUGHPUT: one slice per stream, run concurrently, reassembled in order
        parts = np.array_split(x, min(self._parallel, len(x)))
        results: list[list[np.ndarray] | None] = [None] * len(parts)

        def done(request: Any, index: int) -> None:
            results[index] = [request.get_tensor(p).data.copy() for p in ports]

        self._queue.set_callback(done)
        for i, part in enumerate(parts):
            self._queue.start_async({0: part}, userdata=i)
        self._queue.wait_all()
        return [np.concatenate([r[k] for r in results]) for k in range(len(ports))]

    def describe(self) -> dict[str, Any]:
        hint = self.config["PERFORMANCE_HINT"].lower()
        return {
            **super().describe(),
            "precision": self.precision,
            "hint": hint,
            "threads": self.config.get("INFERENCE_NUM_THREADS", "default"),
        }
