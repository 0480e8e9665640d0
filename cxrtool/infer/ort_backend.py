"""ONNX Runtime backend: exported ``.onnx`` files on the CPU (or CUDA when onnxruntime-gpu is installed).

About 2x torch eager on a 2-core CPU for DenseNet121 (see docs/export.md); the model card
comes from the file's own metadata, so no preprocessing needs to be typed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxrtool.infer.backends import Backend
from cxrtool.modelfile import FEATURES_NAME, OUTPUT_NAME, ModelCard
from cxrtool.modelfile.loaded import LoadedModel
from cxrtool.runtimes.onnxrt import ort_session

_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def _provider(device: str) -> str:
    return _PROVIDER["cuda" if device.startswith("cuda") else "cpu"]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    suffixes = (".onnx",)

    def __init__(self, path: Path, card: ModelCard, device: str, session: Any, threads: int | None):
        super().__init__(path, card, device)
        self.session = session
        self.threads = threads
        self._input = session.get_inputs()[0].name
        names = [o.name for o in session.get_outputs()]
        self._logits = OUTPUT_NAME if OUTPUT_NAME in names else names[0]
        self._features = FEATURES_NAME if FEATURES_NAME in names else None

    @classmethod
    def is_available(cls, device: str) -> bool:
        try:
            import onnxruntime as ort
        except ImportError:
            return False
        return _provider(device) in ort.get_available_providers()

    @classmethod
    def load(
        cls, model: LoadedModel, *, device: str = "cpu", threads: int | None = None, **options: Any
    ) -> OnnxRuntimeBackend:
        """Options: ``threads`` (intra-op threads; default ONNX Runtime's, one per core).  Others are ignored."""
        providers = [_provider(device)]
        if device.startswith("cuda"):
            index = device.partition(":")[2] or "0"
            providers = [("CUDAExecutionProvider", {"device_id": int(index)})]
        session = ort_session(model.data, threads=threads, providers=providers, name=model.path)
        return cls(model.path, model.card, device, session, threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        return self.session.run([self._logits], {self._input: x})[0]

    def run_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self._features is None:
            return self.run(batch), None
        x = np.ascontiguousarray(batch, dtype=np.float32)
        logits, features = self.session.run([self._logits, self._features], {self._input: x})
        return logits, features

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "providers": ",".join(self.session.get_providers()),
            "threads": self.threads or "default",
        }
