"""TensorRT backend: serialised engines built by ``cxrtool export --trt``, run through pycuda.

The CUDA plumbing (contexts, availability, the runner) is :mod:`cxrtool.runtimes.trt_runner`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxrtool.errors import CxrError
from cxrtool.infer.backends import Backend
from cxrtool.modelfile import EngineSidecar, check_compatible
from cxrtool.modelfile.loaded import LoadedModel
from cxrtool.runtimes.trt_runner import TrtRunner, cuda_problem, current_gpu
from cxrtool.runtimes.trtlib import cuda_index, import_tensorrt


class TensorRTBackend(Backend):
    name = "tensorrt"
    suffixes = (".engine", ".plan")

    def __init__(self, path: Path, sidecar: EngineSidecar, device: str, runner: TrtRunner):
        super().__init__(path, sidecar.card, device)
        self.sidecar = sidecar
        self.runner = runner

    @classmethod
    def is_available(cls, device: str) -> bool:
        return device.startswith("cuda") and cuda_problem(device) is None

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        return "TensorRT runs on cuda devices" if not device.startswith("cuda") else cuda_problem(device)

    @classmethod
    def load(cls, model: LoadedModel, *, device: str = "cuda", **options: Any) -> TensorRTBackend:
        """Check the sidecar against this machine, then deserialise.  Options are ignored."""
        index = cuda_index(device)
        path, sidecar = model.path, model.sidecar
        if sidecar is None:
            raise CxrError(f"{path}: not a TensorRT engine with a sidecar")
        trt = import_tensorrt()
        gpu_name, capability = current_gpu(index)
        check_compatible(
            sidecar,
            path,
            tensorrt_version=trt.__version__,
            gpu_name=gpu_name,
            compute_capability=capability,
            engine_sha256=model.sha256,
        )
        return cls(path, sidecar, device, TrtRunner(model.data, index))

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.infer(np.ascontiguousarray(batch, dtype=np.float32))

    def run_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and the engine's ``features`` output from the same execution (the OOD score's input)."""
        outputs = self.runner.infer_outputs(np.ascontiguousarray(batch, dtype=np.float32))
        features = outputs[self.runner.features] if self.runner.features is not None else None
        return outputs[self.runner.logits], features

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.sidecar.precision, "tensorrt": self.sidecar.tensorrt_version}
