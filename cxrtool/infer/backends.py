"""One small backend interface: load a model file, run a preprocessed batch, describe yourself.

Backends are registered by name with the import path of their module (pydicom's plugin idea),
so a missing runtime (TensorRT on a CPU workstation) only disables its own backend.  Every
backend returns raw logits; turning them into probabilities depends on the task and lives in
:func:`probabilities`, shared by all.
"""

from __future__ import annotations

import abc
import importlib
from pathlib import Path
from typing import Any

import numpy as np

from cxrtool.errors import CxrError
from cxrtool.models.checkpoint import ModelCard

# name -> "module:Class"; order is the preference order of ``auto`` among available backends.
BACKENDS: dict[str, str] = {
    "tensorrt": "cxrtool.infer.trt_backend:TensorRTBackend",
    "torch": "cxrtool.infer.torch_backend:TorchBackend",
    "openvino": "cxrtool.infer.openvino_backend:OpenVINOBackend",
    "onnxruntime": "cxrtool.infer.ort_backend:OnnxRuntimeBackend",
}


class Backend(abc.ABC):
    """A loaded model ready to run batches of preprocessed inputs (N, C, H, W float32)."""

    name: str = ""
    #: model file suffixes this backend can load
    suffixes: tuple[str, ...] = ()

    def __init__(self, path: Path, card: ModelCard, device: str):
        self.path = path
        self.card = card
        self.device = device

    @classmethod
    @abc.abstractmethod
    def is_available(cls, device: str) -> bool:
        """True when the runtime is importable and can use ``device`` here."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: Path, *, device: str = "cpu", **options: Any) -> Backend:
        """Load ``path``; raise :class:`CxrError` with a one-line reason when it cannot."""

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, num_classes) float32 for a preprocessed batch."""

    def describe(self) -> dict[str, Any]:
        """What ran: recorded in prediction outputs and bench tables."""
        return {"backend": self.name, "device": self.device, "model": str(self.path)}


def backend_class(name: str) -> type[Backend]:
    try:
        module, cls = BACKENDS[name].split(":")
    except KeyError:
        raise CxrError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}") from None
    return getattr(importlib.import_module(module), cls)


def available_backends(path: str | Path, device: str = "cpu") -> list[str]:
    """Backends that can load this model file on ``device`` here, in ``auto`` preference order."""
    suffix = Path(path).suffix.lower()
    names = []
    for name in BACKENDS:
        try:
            cls = backend_class(name)
        except ImportError:
            continue
        if suffix in cls.suffixes and cls.is_available(device):
            names.append(name)
    return names


def load_backend(path: str | Path, *, backend: str = "auto", device: str = "cpu", **options: Any) -> Backend:
    """Load ``path`` with the named backend, or with ``auto``'s first choice that can load it."""
    path = Path(path)
    if not path.exists():
        raise CxrError(f"{path}: model file not found")
    if backend == "auto":
        names = available_backends(path, device)
        if not names:
            raise CxrError(f"{path}: no available backend can load a '{path.suffix}' model on {device}")
        backend = names[0]
    cls = backend_class(backend)
    if path.suffix.lower() not in cls.suffixes:
        raise CxrError(f"{path}: backend {backend!r} loads {', '.join(cls.suffixes)} files, not '{path.suffix}'")
    if not cls.is_available(device):
        raise CxrError(f"backend {backend!r} is not available on {device} here (see `cxrtool doctor`)")
    return cls.load(path, device=device, **options)


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """Softmax for multiclass, sigmoid for multilabel (numerically stable, float64 inside)."""
    z = logits.astype(np.float64)
    if task == "multilabel":
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
