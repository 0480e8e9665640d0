"""Model-only speed of torch eager / ONNX Runtime / OpenVINO on one exported checkpoint, plus the
top-1 agreement of each ONNX backend with fp32 torch on real films.

    .venv/bin/python bench/export_backends.py [--checkpoint CKPT] [--images DIR] [--repeats 3]

Without ``--checkpoint`` a DenseNet121 (224 px, 3 classes, seeded random weights) is made and
exported in a temporary folder.  Every number of a run comes from the same process on the same
machine; each measurement is repeated and the best (least disturbed) run is kept, because other
jobs share the CPU -- the script prints ``uptime`` before and after so the load is on record.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "covid3"


def make_checkpoint(folder: Path, size: int) -> Path:
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model("densenet121", num_classes=3)
    card = ModelCard(
        arch="densenet121",
        task="multiclass",
        class_names=["covid", "normal", "viral_pneumonia"],
        preprocess=PreprocessCfg(input_size=size),
    )
    return save_checkpoint(folder / "densenet121_random.safetensors", model, card)


def images_per_s(run, batch: np.ndarray, repeats: int, min_seconds: float) -> float:
    """Best of ``repeats`` timings, each looping ``run(batch)`` for at least ``min_seconds`` after a warm-up."""
    run(batch)
    run(batch)
    best = 0.0
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_seconds or n < 3:
            run(batch)
            n += 1
        best = max(best, n * len(batch) / elapsed)
    return best


def logits_all(run, inputs: np.ndarray, batch_size: int = 16) -> np.ndarray:
    return np.concatenate([run(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--max-images", type=int, default=0, help="limit the agreement set (0 = all)")
    args = parser.parse_args()

    import torch

    from cxrtool.export.onnx import export_onnx
    from cxrtool.infer.loading import load_backend
    from cxrtool.inputs import iter_input_files
    from cxrtool.modelfile import default_onnx_path
    from cxrtool.preprocess import load_input

    print("uptime before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    tmp = tempfile.TemporaryDirectory()
    ckpt = args.checkpoint or make_checkpoint(Path(tmp.name), args.size)
    onnx_path = default_onnx_path(ckpt)
    if not onnx_path.exists():
        exported = export_onnx(ckpt, check_images=[args.images])
        print(
            f"exported {onnx_path} in {exported.seconds:.0f} s, parity max |dlogit| {exported.parity.max_abs_diff:.2e}"
        )

    backends = {
        "torch fp32": load_backend(ckpt, backend="torch"),
        "onnxruntime fp32": load_backend(onnx_path, backend="onnxruntime"),
        "openvino auto": load_backend(onnx_path, backend="openvino", precision="auto"),
        "openvino f32": load_backend(onnx_path, backend="openvino", precision="f32"),
        "openvino auto throughput": load_backend(onnx_path, backend="openvino", precision="auto", hint="throughput"),
    }
    for name, b in backends.items():
        print(f"{name:26s} {b.describe()}")

    files = list(iter_input_files([args.images]))
    cfg = backends["torch fp32"].card.preprocess
    inputs = []
    for f in files[: args.max_images or None]:
        try:
            inputs.append(load_input(f, cfg))
        except Exception as exc:  # the agreement set is whatever loads
            print(f"skip {f}: {exc}")
    real = np.stack(inputs)
    print(f"agreement set: {len(real)} real films from {args.images}")

    reference = logits_all(backends["torch fp32"].run, real)
    top2 = np.sort(reference, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    print(
        f"torch logits: |max| {np.abs(reference).max():.3g}, top1-top2 margin median {np.median(margin):.3g}, "
        f"min {margin.min():.3g}"
    )
    rows = []
    speed: dict[tuple[str, int], float] = {}
    for name, b in backends.items():
        got = reference if name == "torch fp32" else logits_all(b.run, real)
        agree = float((got.argmax(1) == reference.argmax(1)).mean())
        diff = float(np.abs(got - reference).max())
        for bs in args.batches:
            speed[name, bs] = images_per_s(b.run, real[:bs], args.repeats, args.seconds)
        rows.append((name, agree, diff))

    header = f"{'backend':26s} {'top-1 vs torch':>14s} {'max|dlogit|':>11s}" + "".join(
        f" {'bs' + str(bs) + ' img/s':>11s}" for bs in args.batches
    )
    print("\n" + header)
    for name, agree, diff in rows:
        print(f"{name:26s} {agree:14.1%} {diff:11.2e}" + "".join(f" {speed[name, bs]:11.1f}" for bs in args.batches))
    print()
    for bs in args.batches:
        t, o = speed["torch fp32", bs], speed["onnxruntime fp32", bs]
        print(
            f"batch {bs}: onnxruntime/torch {o / t:.2f}x, "
            f"openvino auto/onnxruntime {speed['openvino auto', bs] / o:.2f}x, "
            f"openvino auto throughput/onnxruntime {speed['openvino auto throughput', bs] / o:.2f}x"
        )
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
