"""PyTorch backend: cxrtool checkpoints on CPU or CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrtool.errors import CxrError
from cxrtool.infer.backends import Backend
from cxrtool.modelfile.loaded import LoadedModel
from cxrtool.models.checkpoint import model_from_loaded


class TorchBackend(Backend):
    name = "torch"
    suffixes = (".safetensors",)

    def __init__(self, path: Path, card, device: str, model: torch.nn.Module):
        super().__init__(path, card, device)
        self.model = model

    @classmethod
    def is_available(cls, device: str) -> bool:
        return device == "cpu" or (device.startswith("cuda") and torch.cuda.is_available())

    @classmethod
    def load(cls, model: LoadedModel, *, device: str = "cpu", **options: Any) -> TorchBackend:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise CxrError("CUDA requested but no CUDA device is available")
        path, card, net = model.path, model.card, model_from_loaded(model)
        # channels-last: oneDNN (and cuDNN) convolutions skip a layout reorder per call; DenseNet-121's
        # forward ran 1.25-1.6x faster on the 2-core dev CPUs (bench/explain.py prints both layouts)
        net = net.to(device).eval().to(memory_format=torch.channels_last)
        return cls(path, card, device, net)

    def _tensor(self, batch: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.model(self._tensor(batch)).float().cpu().numpy()

    @torch.inference_mode()
    def run_features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if not hasattr(self.model, "forward_features"):
            return self.run(batch), None
        logits, features = self.model.forward_features(self._tensor(batch))
        return logits.float().cpu().numpy(), features.float().cpu().numpy()
