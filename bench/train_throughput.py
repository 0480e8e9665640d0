"""Training throughput (images/s) of full optimiser steps, and the AMP + channels_last speed-up.

Runs the same step as ``cxrtool train`` (autocast, GradScaler, AdamW, cross-entropy) on random
inputs, so it measures the model and the device, not image decoding.  Each configuration is
timed ``--repeats`` times after ``--warmup`` steps and the best repeat is reported (the least
disturbed by other processes).  On CUDA it compares fp32 with AMP + channels_last in the same
run; on CPU it compares fp32 with bf16 autocast.

    .venv/bin/python bench/train_throughput.py --size 224 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from cxrtool.devices import resolve_device
from cxrtool.models import build_model
from cxrtool.train.runtime import Runtime, grad_scaler, resolve_runtime


def measure(arch: str, runtime: Runtime, *, size: int, batch: int, steps: int, warmup: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = runtime.prepare(build_model(arch, num_classes=3)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = grad_scaler(runtime)
    x = runtime.inputs(torch.randn(batch, 3, size, size))
    y = torch.randint(0, 3, (batch,), device=runtime.device)

    def step() -> None:
        with runtime.autocast():
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def sync() -> None:
        if runtime.cuda:
            torch.cuda.synchronize(runtime.device)

    for _ in range(warmup):
        step()
    best = 0.0
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        best = max(best, steps * batch / (time.perf_counter() - t0))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="densenet121")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":
        amp, _ = resolve_runtime(device, "auto", True)  # also turns on cudnn.benchmark, as training does
        configs = {"fp32": Runtime(device), "amp+channels_last": amp}
        name = torch.cuda.get_device_name(device)
    else:
        configs = {"fp32": Runtime(device), "bf16-autocast": Runtime(device, torch.bfloat16, False)}
        name = f"CPU x{os.cpu_count()} (torch threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.1f})"
    kw = {k: getattr(args, k) for k in ("size", "batch", "steps", "warmup", "repeats")}
    results = {label: measure(args.arch, rt, **kw) for label, rt in configs.items()}
    base = results["fp32"]
    for label, ips in results.items():
        print(f"{label:>18}: {ips:8.1f} images/s  x{ips / base:.2f} vs fp32")
    print(json.dumps({"device": name, "arch": args.arch, **kw, "images_per_s": results}))


if __name__ == "__main__":
    main()
