"""One small backend interface: build from a loaded model file, run a preprocessed batch, describe yourself.

Backends are registered by name with the import path of their module (pydicom's plugin idea),
so a missing runtime (TensorRT on a CPU workstation) only disables its own backend.  Every
backend returns raw logits; turning them into probabilities is the model card's
:class:`~cxrtool.task.Task`'s job, the same for all.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrtool.errors import CxrError

if TYPE_CHECKING:  # the CLI reads BACKENDS for its --backend choices: no numpy at --help
    import numpy as np

    from cxrtool.modelfile import ModelCard
    from cxrtool.modelfile.loaded import LoadedModel

# name -> "module:Class" (imported only when used); ``auto`` ranks them in cxrtool.infer.auto.
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
        #: set by ``auto``: why this backend and file were picked (:mod:`cxrtool.infer.auto`)
        self.choice: str | None = None
        #: the opened file this backend was built from (set by :func:`load_backend`): model id, trust statistics
        self.loaded: LoadedModel | None = None

    @classmethod
    @abc.abstractmethod
    def is_available(cls, device: str) -> bool:
        """True when the runtime is importable and can use ``device`` here."""

    @classmethod
    def unavailable_reason(cls, device: str) -> str | None:
        """Why :meth:`is_available` is False, when the backend can say more than "not available"."""
        return None

    @classmethod
    @abc.abstractmethod
    def load(cls, model: LoadedModel, *, device: str = "cpu", **options: Any) -> Backend:
        """Build from ``model``'s bytes (never reading its file again); :class:`CxrError` with a one-line reason."""

    @classmethod
    def build(cls, model: LoadedModel, *, device: str = "cpu", **options: Any) -> Backend:
        """:meth:`load`, with the loaded model kept on the backend for everything downstream."""
        engine = cls.load(model, device=device, **options)
        engine.loaded = model
        return engine

    @abc.abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits (N, num_classes) float32 for a preprocessed batch."""

    def run_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits and the pooled features (N, width) of the same pass, for :mod:`cxrtool.trust`.

        Features are None when this model file has none (an export made before the ``features``
        output existed): the OOD score then stays empty.  The base class runs :meth:`run` only.
        """
        return self.run(batch), None

    def describe(self) -> dict[str, Any]:
        """What ran: recorded in prediction outputs and bench tables."""
        info = {"backend": self.name, "device": self.device, "model": str(self.path)}
        return {**info, "choice": self.choice} if self.choice else info


def backend_class(name: str) -> type[Backend]:
    try:
        module, cls = BACKENDS[name].split(":")
    except KeyError:
        raise CxrError(f"unknown backend {name!r}; choose from auto, {', '.join(BACKENDS)}") from None
    return getattr(importlib.import_module(module), cls)


def check_finite(logits: np.ndarray, paths: Sequence[str | Path]) -> list[str | None]:
    """Per input, why its model output cannot be reported (NaN/Inf logits), else None.

    Every backend's logits go through this before probabilities are computed, so a broken model
    or an input that drives it to overflow gives an error row, never a silent ``nan`` probability.
    ``paths`` names the inputs (one per logits row).
    """
    import numpy as np

    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] != len(paths):
        raise ValueError(f"logits of shape {logits.shape} for {len(paths)} inputs")
    bad = ~np.isfinite(logits)
    reasons: list[str | None] = []
    for row in bad:
        n = int(row.sum())
        reasons.append(f"model output is not finite (NaN or infinity in {n} of {row.size} logits)" if n else None)
    return reasons
