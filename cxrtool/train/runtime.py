"""Device, mixed precision and batched inference, shared by training and ``evaluate``.

On CUDA: autocast (bf16, or fp16 with a GradScaler), channels_last, pinned memory and
non-blocking copies.  On CPU the same code runs in float32 (or bf16 autocast when asked), so
nothing here needs a GPU to be exercised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors run."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(self.device, non_blocking=self.cuda, memory_format=fmt)

    def prepare(self, model: nn.Module) -> nn.Module:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return model.to(self.device, memory_format=fmt)

    def describe(self) -> str:
        amp = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        return f"{self.device} {amp}{' channels_last' if self.channels_last else ''}"


def native_bf16(device: torch.device) -> bool:
    """True on GPUs with bf16 tensor cores (compute capability >= 8.0, Ampere on).

    Not ``torch.cuda.is_bf16_supported()``: it also says True on V100/T4, where bf16 is emulated
    and slower than fp16 with a grad scaler.
    """
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_runtime(device: torch.device, amp: str, channels_last: bool | None) -> tuple[Runtime, list[str]]:
    """Pick the autocast dtype (``auto``: bf16 on GPUs with native bf16, fp16 otherwise on CUDA; off on CPU).

    Returns the runtime and warnings for requests that had to be degraded (fp16 on CPU).  On CUDA
    it also turns on ``cudnn.benchmark`` (training and evaluation run fixed input shapes).
    """
    warnings: list[str] = []
    dtype: torch.dtype | None = None
    if device.type == "cuda":
        # cuDNN picks the fastest convolution algorithms for the (fixed) input shapes once per shape
        torch.backends.cudnn.benchmark = True
        if amp == "auto" or amp == "bf16":
            dtype = torch.bfloat16 if native_bf16(device) else torch.float16
            if amp == "bf16" and dtype is torch.float16:
                warnings.append(
                    "this GPU has no native bf16 (compute capability < 8.0); using fp16 autocast with a grad scaler"
                )
        elif amp == "fp16":
            dtype = torch.float16
    elif amp == "bf16":
        dtype = torch.bfloat16
    elif amp == "fp16":
        warnings.append("fp16 autocast needs CUDA; training in float32 on CPU (bf16 works on CPU)")
    cl = device.type == "cuda" if channels_last is None else channels_last
    return Runtime(device, dtype, cl), warnings


def grad_scaler(runtime: Runtime) -> torch.amp.GradScaler:
    """A scaler that is active only for fp16 on CUDA (bf16 and fp32 do not underflow like fp16)."""
    enabled = runtime.cuda and runtime.amp_dtype is torch.float16
    return torch.amp.GradScaler(runtime.device.type, enabled=enabled)


def restore_scaler(scaler: torch.amp.GradScaler, saved: dict) -> None:
    """Load a saved GradScaler state; an empty one (saved while the scaler was off: CPU, bf16, fp32) starts fresh.

    ``GradScaler.load_state_dict({})`` raises, so a run started on the CPU with ``--amp fp16`` could
    not be resumed on a GPU.
    """
    if saved:
        scaler.load_state_dict(saved)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, batches: Iterable, runtime: Runtime
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Run ``(x, target, index, error)`` batches through ``model``: float32 logits, targets, indices, errors."""
    logits, targets, indices, errors = [], [], [], []
    for x, y, idx, err in batches:
        with runtime.autocast():
            out = model(runtime.inputs(x))
        logits.append(out.float().cpu())
        targets.append(y)
        indices.append(idx)
        errors.extend(err)
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0,)), np.zeros((0,), np.int64), []
    return torch.cat(logits).numpy(), torch.cat(targets).numpy(), torch.cat(indices).numpy(), errors
