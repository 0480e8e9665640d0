"""One prepared check of the GPU half on a machine with an NVIDIA GPU: tests, then a short benchmark.

    make gpu-check                      # or: .venv/bin/python bench/gpu_check.py [--data DIR] [--out DIR]

Steps, each timed and recorded (a failed step is recorded and the next one still runs):

1. ``pip install -e '.[trt]'`` when ``tensorrt`` or ``pycuda`` is missing;
2. ``make test-gpu`` (the tests marked ``gpu``: real TensorRT engines, CUDA LRP, AMP, 2-GPU DDP
   when there are two);
3. a small model: ``cxrtool train`` for a few epochs at 224 px on the films of ``--data``, else
   ``$CXRTOOL_SHARED_DATA/covid3_256``, else synthetic films; it gets its OOD statistics as usual;
4. training img/s at 224 px, fp32 vs AMP + channels_last (``bench/train_throughput.py``'s step);
5. ONNX export, TensorRT engines fp32 / fp16 / int8 (``cxrtool export --trt``; int8 calibrated on
   the films, its held-out gate may refuse an undertrained model: recorded);
6. predict img/s at batch 16 and 64 for torch, ONNX Runtime CUDA (when its provider is there) and
   each engine, with top-1 agreement and OOD-score / flag parity against torch on the same films;
7. explain (LRP) on CUDA vs a plain forward, img/s.

Writes ``gpu_check.json`` and ``gpu_check.txt`` into ``--out`` (default ``runs/gpu-check``).  Made
to finish in under 8 minutes on one current GPU (``--budget`` seconds; later steps are skipped
with the reason once it is spent).  On a machine without CUDA it stops at once: "no CUDA device".
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("covid", "normal", "viral_pneumonia")
SIZE = 224


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        type=Path,
        help="folder of class folders of films (default: $CXRTOOL_SHARED_DATA/covid3_256, else synthetic)",
    )
    p.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-check")
    p.add_argument("--budget", type=float, default=330.0, help="seconds for the steps after the tests (then skipped)")
    p.add_argument("--skip-install", action="store_true")
    p.add_argument("--skip-tests", action="store_true")
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA device (torch.cuda.is_available() is False); nothing was run. "
            "Run it on a machine with an NVIDIA GPU and its driver.",
            file=sys.stderr,
        )
        return 2
    check = Check(args.out, args.budget)
    check.record["machine"] = machine(torch)
    if not args.skip_install:
        check.step("install_trt", install_trt)
    if not args.skip_tests:
        check.step("test_gpu", run_gpu_tests, untimed=True)
    check.start_budget()
    films = check.step("films", lambda: films_folder(args.data, args.out / "films"))
    model = check.step("train_model", lambda: train_model(films, args.out / "model")) if films else None
    check.step("train_throughput", train_throughput)
    if model:
        engines = check.step("export", lambda: export_all(model, films))
        check.step("predict", lambda: predict_all(model, engines or {}, films))
        check.step("explain", lambda: explain_speed(model, films))
    check.write()
    print(check.summary())
    return 0 if not check.record["failed"] else 1


class Check:
    """The record being built: one entry per step, its seconds, its result or its error."""

    def __init__(self, out: Path, budget: float):
        self.out, self.budget = out, budget
        self.started = time.perf_counter()
        self.budget_start: float | None = None
        self.record: dict[str, Any] = {"steps": {}, "failed": [], "skipped": {}}
        out.mkdir(parents=True, exist_ok=True)

    def start_budget(self) -> None:
        self.budget_start = time.perf_counter()

    def step(self, name: str, fn: Callable[[], Any], untimed: bool = False) -> Any:
        if self.budget_start is not None and not untimed and time.perf_counter() - self.budget_start > self.budget:
            self.record["skipped"][name] = f"time budget of {self.budget:.0f} s spent"
            return None
        print(f"gpu-check: {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            result = fn()
            ok = True
        except Exception as exc:  # noqa: BLE001 -- one failed step is recorded; the others still run
            result, ok = None, False
            self.record["failed"].append(name)
            self.record["steps"][name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-3000:],
            }
        entry = self.record["steps"].setdefault(name, {})
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        if ok:
            entry["result"] = jsonable(result)
        return result

    def write(self) -> None:
        from cxrtool.fsutil import atomic_write_text

        self.record["total_seconds"] = round(time.perf_counter() - self.started, 1)
        atomic_write_text(self.out / "gpu_check.json", json.dumps(self.record, indent=2, default=str) + "\n")
        atomic_write_text(self.out / "gpu_check.txt", self.summary() + "\n")

    def summary(self) -> str:
        r = self.record
        lines = [
            f"cxrtool gpu-check on {r['machine'].get('gpu')} ({r['machine'].get('cuda')}), "
            f"{r.get('total_seconds', '?')} s"
        ]
        for name, entry in r["steps"].items():
            result = entry.get("result")
            if "error" in entry:
                lines.append(f"  {name}: FAILED after {entry['seconds']} s: {entry['error'][:300]}")
            elif isinstance(result, dict) and "rows" in result:
                lines.append(f"  {name} ({entry['seconds']} s):")
                lines += [f"    {row}" for row in result["rows"]]
            else:
                lines.append(f"  {name} ({entry['seconds']} s): {json.dumps(jsonable(result), default=str)[:400]}")
        lines += [f"  {name}: skipped ({why})" for name, why in r["skipped"].items()]
        return "\n".join(lines)


def jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


def machine(torch: Any) -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
    }


def install_trt() -> dict[str, Any]:
    missing = [m for m in ("tensorrt", "pycuda") if importlib.util.find_spec(m) is None]
    if missing:
        run = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "-e", f"{REPO}[trt]"],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode:
            raise RuntimeError(f"pip install -e '.[trt]' failed: {run.stderr[-1500:]}")
        importlib.invalidate_caches()
    import tensorrt

    return {"installed_now": missing, "tensorrt": tensorrt.__version__}


def run_gpu_tests() -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        ["make", "-C", str(REPO), "test-gpu", f"VENV={sys.prefix}"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    tail = run.stdout.strip().splitlines()[-1:] or [""]
    if run.returncode:
        raise RuntimeError(f"make test-gpu exit {run.returncode}: {tail[0]}\n{run.stdout[-3000:]}")
    return {"summary": tail[0]}


def films_folder(data: Path | None, synthetic_dir: Path) -> Path:
    """``--data``, the shared covid3_256 films, or 3 x 60 synthetic films a small CNN can tell apart."""
    shared = Path(os.environ.get("CXRTOOL_SHARED_DATA", REPO.parent / "shared" / "data")) / "covid3_256"
    for folder in (data, shared):
        if folder is not None and folder.is_dir():
            return folder
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    for k, name in enumerate(CLASSES):
        (synthetic_dir / name).mkdir(parents=True, exist_ok=True)
        for i in range(60):
            pattern = (xx, yy, (xx + yy) / 2)[k]
            img = 0.6 * pattern + 0.4 * rng.random((256, 256))
            Image.fromarray((img * 255).astype(np.uint8)).save(synthetic_dir / name / f"{name}_{i:03d}.png")
    return synthetic_dir


def _films(folder: Path) -> list[tuple[Path, str]]:
    return [(f, c.name) for c in sorted(folder.iterdir()) if c.is_dir() for f in sorted(c.glob("*.png"))]


def train_model(films: Path, out: Path) -> dict[str, Any]:
    """3 epochs of ``cxrtool train`` at 224 px (init none: no download), 80/10/10 split per class."""
    from cxrtool.train.config import TrainConfig
    from cxrtool.train.loop import fit

    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "films.csv"
    rows = []
    for cls in sorted({c for _, c in _films(films)}):
        files = [f for f, c in _films(films) if c == cls]
        for i, f in enumerate(files):
            split = "val" if i % 10 == 8 else "test" if i % 10 == 9 else "train"
            rows.append({"path": str(f), "label": cls, "split": split})
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    t0 = time.perf_counter()
    result = fit(
        TrainConfig(
            manifest=str(manifest),
            out_dir=str(out / "run"),
            init="none",
            input_size=SIZE,
            epochs=3,
            batch_size=32,
            workers=4,
            device="cuda",
        )
    )
    best = out / "run" / "best.safetensors"
    return {
        "checkpoint": best,
        "films": len(rows),
        "seconds": round(time.perf_counter() - t0, 1),
        "history": result.history,
    }


def train_throughput() -> dict[str, Any]:
    import torch

    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from cxrtool.train.runtime import Runtime, resolve_runtime

    device = torch.device("cuda:0")
    amp, _ = resolve_runtime(device, "auto", True)
    rows = {}
    for label, rt in {"fp32": Runtime(device), f"amp {amp.describe()}": amp}.items():
        rows[label] = round(bench.measure("densenet121", rt, size=SIZE, batch=32, steps=10, warmup=3, repeats=2), 1)
    return {
        "rows": [f"train densenet121 {SIZE}px batch 32: {k}: {v} img/s" for k, v in rows.items()],
        "img_per_s": rows,
    }


def export_all(model: dict[str, Any], films: Path) -> dict[str, str]:
    """The ONNX export and one engine per precision (each a separate build; a refused one is recorded)."""
    from cxrtool.export.pipeline import export_model
    from cxrtool.modelfile import BatchProfile, sidecar_path

    ckpt = Path(model["checkpoint"])
    out: dict[str, Any] = {"errors": {}}
    onnx = export_model(ckpt, onnx=True, check_images=[films], check_count=16).onnx_path
    out["onnx"] = str(onnx)
    for precision in ("fp32", "fp16", "int8"):
        try:
            done = export_model(
                onnx,
                onnx=False,
                trt=True,
                fp16=precision == "fp16",
                int8=precision == "int8",
                calib=films if precision == "int8" else None,
                profile=BatchProfile(1, 16, 64),
                device="cuda",
                check_images=[films],
                check_count=32,
            )
            # next to the ONNX (the engine's OOD statistics are read from it), one name per precision
            engine = done.engine.path.with_name(f"{onnx.stem}.{precision}.engine")
            sidecar_path(done.engine.path).replace(sidecar_path(engine))
            done.engine.path.replace(engine)
            out[precision] = str(engine)
            out[f"{precision}_parity"] = {
                "max_abs_diff": done.engine.parity.max_abs_diff,
                "top1": done.engine.parity.top1_agreement,
                "build_s": round(done.engine.seconds, 1),
            }
        except Exception as exc:  # noqa: BLE001 -- an int8 gate refusal is a result, not a crash
            out["errors"][precision] = f"{type(exc).__name__}: {exc}"[:1000]
    return out


def _inputs(films: Path, n: int, cfg: Any) -> Any:
    import numpy as np

    from cxrtool.export.parity import load_check_batch

    batch, _ = load_check_batch([films], cfg, limit=n)
    reps = -(-n // len(batch))
    return np.ascontiguousarray(np.concatenate([batch] * reps)[:n], dtype=np.float32)


def _speed(fn: Callable[[], Any], n: int, min_time: float = 1.5) -> float:
    import statistics

    import torch

    for _ in range(3):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_time:
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def predict_all(model: dict[str, Any], engines: dict[str, Any], films: Path) -> dict[str, Any]:
    """img/s at batch 16 and 64 per backend; top-1 agreement, OOD-score and flag parity with torch on 64 films."""
    import numpy as np

    from cxrtool.infer.loading import load_backend
    from cxrtool.models.checkpoint import read_card
    from cxrtool.trust import load_trust

    ckpt = Path(model["checkpoint"])
    card = read_card(ckpt)
    trust = load_trust(ckpt, card)
    x = _inputs(films, 64, card.preprocess)
    candidates = [("torch", ckpt)]
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and engines.get("onnx"):
        candidates.append(("onnxruntime", Path(engines["onnx"])))
    candidates += [(f"tensorrt {p}", Path(engines[p])) for p in ("fp32", "fp16", "int8") if engines.get(p)]
    results, rows, reference = {}, [], None
    for label, path in candidates:
        backend = load_backend(path, backend=label.split()[0], device="cuda")
        logits, features = backend.run_features(x)
        verdicts = trust.assess(logits, features)
        entry: dict[str, Any] = {}
        for b in (16, 64):
            batch = x[:b]
            entry[f"img_per_s_b{b}"] = round(_speed(functools.partial(backend.run_features, batch), b), 1)
        if reference is None:
            reference = (logits, verdicts)
        else:
            ref_logits, ref_verdicts = reference
            scores = [(a.ood_score, b.ood_score) for a, b in zip(ref_verdicts, verdicts)]
            entry["top1_agreement"] = float(np.mean(ref_logits.argmax(1) == logits.argmax(1)))
            entry["ood_score_max_abs_diff"] = max(
                (abs(a - b) for a, b in scores if a is not None and b is not None), default=None
            )
            entry["ood_scored"] = sum(b is not None for _, b in scores)
            entry["flag_agreement"] = float(np.mean([a.flag == b.flag for a, b in zip(ref_verdicts, verdicts)]))
        results[label] = entry
        rows.append(f"{label:16s} " + ", ".join(f"{k} {v}" for k, v in entry.items()))
    return {"rows": rows, "backends": results, "engine_errors": engines.get("errors", {})}


def explain_speed(model: dict[str, Any], films: Path) -> dict[str, Any]:
    import torch

    from cxrtool.explain.attribution import Explainer
    from cxrtool.models.checkpoint import load_checkpoint

    net, card = load_checkpoint(Path(model["checkpoint"]))
    x = torch.from_numpy(_inputs(films, 16, card.preprocess))
    explainer = Explainer(net, bounds=card.preprocess.input_bounds(), device="cuda")
    forward = net.to("cuda").eval()
    xc = x.to("cuda")

    @torch.inference_mode()
    def plain() -> Any:
        return forward(xc)

    lrp = _speed(lambda: explainer.attribute(x), len(x))
    fwd = _speed(plain, len(x))
    return {
        "rows": [f"explain batch 16 on cuda: {lrp:.1f} img/s; forward {fwd:.1f} img/s ({fwd / lrp:.1f}x)"],
        "lrp_img_per_s": round(lrp, 1),
        "forward_img_per_s": round(fwd, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
