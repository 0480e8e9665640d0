"""The CUDA-only decisions of training, checked on the CPU against strict stand-ins for torch.cuda.

Each stand-in behaves like the real call on a machine of the kind named (a V100, a machine with
one GPU left): what is asserted is what cxrtool asks of torch, which a CPU run can see.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from cxrtool.train import distributed as D
from cxrtool.train import state as state_mod
from cxrtool.train.runtime import resolve_runtime, restore_scaler
from cxrtool.train.state import rng_state


def test_each_rank_sets_its_gpu_and_binds_the_group_to_it(monkeypatch):
    """pytorch/pytorch#75619: set_device(local_rank) before the group, and init_process_group(device_id=...)."""
    calls: list = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    info = D.setup(use_cuda=True)
    assert calls == [("set_device", 1), ("init", {"backend": "nccl", "device_id": torch.device("cuda", 1)})]
    assert (info.rank, info.world_size, info.local_rank) == (1, 2, 1)
    calls.clear()
    D.setup(use_cuda=False)
    assert calls == [("init", {"backend": "gloo"})]  # CPU: no device to set


@pytest.mark.parametrize(
    "capability, amp, want",
    [
        ((7, 0), "auto", torch.float16),
        ((7, 5), "bf16", torch.float16),
        ((8, 0), "auto", torch.bfloat16),
        ((9, 0), "fp16", torch.float16),
    ],
)
def test_amp_auto_takes_bf16_only_with_native_support(monkeypatch, capability, amp, want):
    """V100 (7.0) / T4 (7.5): ``is_bf16_supported()`` says True (emulation), yet fp16 + GradScaler is the fast path."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    runtime, warnings = resolve_runtime(torch.device("cuda:0"), amp, None)
    assert runtime.amp_dtype is want
    assert bool(warnings) == (amp == "bf16" and want is torch.float16)
    assert torch.backends.cudnn.benchmark is True  # real training on CUDA benchmarks its convolutions


def test_cpu_runtime_leaves_cudnn_alone(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    resolve_runtime(torch.device("cpu"), "auto", None)
    assert torch.backends.cudnn.benchmark is False


def test_resume_with_an_empty_scaler_state():
    """A run started where the scaler was off saves ``{}``; an active scaler (fp16 on CUDA) must resume from it."""
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    with pytest.raises(RuntimeError):
        scaler.load_state_dict({})  # what the resume used to do
    restore_scaler(scaler, {})
    assert scaler.get_scale() == 65536.0  # a fresh scaler
    saved = torch.amp.GradScaler("cpu", enabled=True, init_scale=128.0).state_dict()
    restore_scaler(scaler, saved)
    assert scaler.get_scale() == 128.0


def test_resume_with_fewer_gpus_than_saved(monkeypatch):
    """Saved on 2 GPUs, resumed where 1 is visible: device 0's generator is restored, nothing raises."""
    restored: dict = {}

    def set_rng_state(state, device=0):  # torch.cuda.set_rng_state on a machine with one GPU
        if int(device) >= 1:
            raise IndexError("list index out of range")
        restored[int(device)] = state

    def set_rng_state_all(states):  # the real one: set_rng_state(state, i) for every saved state
        for i, state in enumerate(states):
            set_rng_state(state, i)

    state = rng_state()
    state["cuda"] = [torch.full((16,), 1, dtype=torch.uint8), torch.full((16,), 2, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_rng_state_all)
    set_rng_state(state["cuda"][0], 0)  # the stand-in itself is strict
    with pytest.raises(IndexError):
        set_rng_state_all(state["cuda"])
    restored.clear()
    state_mod.set_rng_state(state)
    assert list(restored) == [0] and torch.equal(restored[0], state["cuda"][0])
