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

# name -> "module:Class" (imported only when used); ``auto`` tries them in AUTO_ORDER.
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


#: ``auto``'s preference: TensorRT, then torch on CUDA; on the CPU OpenVINO, then ONNX Runtime, then torch.
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("tensorrt", "torch", "onnxruntime", "openvino"),
    "cpu": ("openvino", "onnxruntime", "torch", "tensorrt"),
}


def _auto_order(device: str) -> list[str]:
    order = list(AUTO_ORDER["cuda" if device.startswith("cuda") else "cpu"])
    return order + [name for name in BACKENDS if name not in order]


def model_files(path: str | Path) -> list[tuple[Path, bool]]:
    """The given model file, then the files ``cxrtool export`` derived from it, each with "is it current".

    A checkpoint's exports live in ``<folder>/engines/<stem>.onnx`` / ``.engine``; an ONNX file's
    engine sits next to it.  A derived file counts as current only when the source hash recorded
    inside it matches the source file now, so a stale export is never picked up silently.
    """
    from cxrtool.export.onnx import default_onnx_path, exported_from
    from cxrtool.export.tensorrt import default_engine_path, engine_matches_source
    from cxrtool.models.checkpoint import file_sha256

    path = Path(path)
    files = [(path, True)]
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        onnx_path, engine_path = default_onnx_path(path), default_engine_path(path)
    elif suffix == ".onnx":
        onnx_path, engine_path = None, default_engine_path(path)
    else:
        return files
    digest = file_sha256(path)
    if onnx_path is not None and onnx_path.is_file():
        files.append((onnx_path, exported_from(onnx_path, digest)))
    if engine_path.is_file():
        files.append((engine_path, engine_matches_source(engine_path, digest)))
    return files


def _candidates(path: Path, device: str) -> list[tuple[str, Path]]:
    files = [f for f, current in model_files(path) if current]
    found = []
    for name in _auto_order(device):
        try:
            cls = backend_class(name)
        except ImportError:
            continue
        match = next((f for f in files if f.suffix.lower() in cls.suffixes), None)
        if match is not None and cls.is_available(device):
            found.append((name, match))
    return found


def available_backends(path: str | Path, device: str = "cpu") -> list[str]:
    """Backends that can run this model on ``device`` here (directly or via its current export), in ``auto`` order."""
    return [name for name, _ in _candidates(Path(path), device)]


def load_backend(path: str | Path, *, backend: str = "auto", device: str = "cpu", **options: Any) -> Backend:
    """Load ``path`` with the named backend, or with ``auto``'s first choice that can run it.

    A checkpoint runs on onnxruntime/openvino/tensorrt through its export in ``engines/`` (see
    :func:`model_files`); the returned backend's ``path`` is the file actually loaded.  Options a
    backend does not use are ignored, so callers can pass one set to ``auto``.
    """
    path = Path(path)
    if not path.exists():
        raise CxrError(f"{path}: model file not found")
    if backend == "auto":
        found = _candidates(path, device)
        if not found:
            raise CxrError(f"{path}: no available backend can run a '{path.suffix}' model on {device}")
        backend, chosen = found[0]
    else:
        cls = backend_class(backend)
        files = [(path, True)] if path.suffix.lower() in cls.suffixes else model_files(path)
        match = next(((f, current) for f, current in files if f.suffix.lower() in cls.suffixes), None)
        if match is None:
            hint = "run `cxrtool export` on it first" if path.suffix.lower() in (".safetensors", ".onnx") else "give it another model file"
            raise CxrError(f"{path}: backend {backend!r} loads {', '.join(cls.suffixes)} files; {hint}")
        chosen, current = match
        if not current:
            raise CxrError(f"{chosen} was made from a different version of {path.name}; export it again")
    cls = backend_class(backend)
    if not cls.is_available(device):
        raise CxrError(f"backend {backend!r} is not available on {device} here (see `cxrtool doctor`)")
    return cls.load(chosen, device=device, **options)


def probabilities(logits: np.ndarray, task: str) -> np.ndarray:
    """Softmax for multiclass, sigmoid for multilabel (numerically stable, float64 inside)."""
    z = logits.astype(np.float64)
    if task == "multilabel":
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
