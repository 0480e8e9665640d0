"""Issue-13 targets in one run: NNCF INT8 vs fp32 backends, ``auto``'s pick, end-to-end vs ideal.

    .venv/bin/python bench/int8.py [--checkpoint CKPT] [--size 224] [--data DIR] [--images 64] [--workdir DIR]

Without ``--checkpoint`` a DenseNet121 (seeded random weights) at ``--size`` is made; pass a
trained checkpoint for agreement numbers that mean something.  Steps: ONNX export (if there is no
current one), ``export_int8`` calibrated on ``--data`` with a quarter of the films held back (the
gate's numbers are printed), then :func:`cxrtool.infer.measure.run_bench` on the *held-out* films
only (top-1 agreement against torch fp32 on films the quantizer never saw).  Targets, each a ratio
within this run:

* INT8 >= 1.8x ONNX Runtime fp32 model-only at batch 16, >= 99% top-1 agreement with torch fp32
  (>= 3x is the expectation on a VNNI/AMX CPU);
* ``auto`` (decided from this run's numbers) never slower than the fastest fp32 backend;
* end-to-end >= 0.9x 1/(decode + model) for every backend at batch 16.

Exit code 1 when a target is missed.  ``uptime`` is printed before and after: other jobs on a
shared machine move absolute numbers, and the ratios less.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CLASSES = ["covid", "normal", "viral_pneumonia"]


def random_checkpoint(workdir: Path, size: int) -> Path:
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    ckpt = workdir / f"densenet121_random_{size}.safetensors"
    if not ckpt.exists():
        torch.manual_seed(0)
        card = ModelCard(
            arch="densenet121", task="multiclass", class_names=CLASSES, preprocess=PreprocessCfg(input_size=size)
        )
        save_checkpoint(ckpt, build_model("densenet121", num_classes=3), card)
    return ckpt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "covid3")
    parser.add_argument("--images", type=int, default=64, help="held-out films used by the bench (0 = all)")
    parser.add_argument("--min-time", type=float, default=3.0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cxrtool-bench-int8"))
    parser.add_argument(
        "--workers", type=int, default=None, help="decode processes of the end-to-end runs (default: predict's)"
    )
    args = parser.parse_args()

    from cxrtool.cpu import cpu_flags
    from cxrtool.export.calib_films import calibration_set
    from cxrtool.export.int8 import Int8CheckError, export_int8
    from cxrtool.export.onnx import export_onnx
    from cxrtool.infer.measure import run_bench
    from cxrtool.modelfile import (
        default_int8_path,
        default_onnx_path,
        exported_from,
        file_sha256,
        read_card,
    )

    def log(text: str) -> None:
        print(f"  {text}", file=sys.stderr, flush=True)

    print("uptime before:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"})
    print(f"CPU flags that matter: {', '.join(flags) or 'none'}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    ckpt = args.checkpoint or random_checkpoint(args.workdir, args.size)
    onnx_path = default_onnx_path(ckpt)
    if not exported_from(onnx_path, file_sha256(ckpt)):
        log(f"exporting {onnx_path}")
        export_onnx(ckpt, onnx_path, check_images=[args.data])
    try:
        done = export_int8(onnx_path, args.data, on_step=log)
    except Int8CheckError as exc:
        print(f"FAIL  INT8 export refused: {exc}")
        return 1
    c = done.check
    print(
        f"INT8 written: {done.path} ({done.seconds:.0f} s); gate: {c.summary()}; "
        f"features cos min {c.features_cosine_min}"
    )
    assert done.path == default_int8_path(ckpt)

    holdout = calibration_set(args.data, read_card(ckpt)).holdout
    with tempfile.TemporaryDirectory(prefix="holdout-") as tmp:
        for i, f in enumerate(holdout):  # the bench reads a folder: the held-out films, linked
            (Path(tmp) / f"{i:04d}_{f.name}").symlink_to(f)
        report = run_bench(
            [ckpt],
            data=Path(tmp),
            batch_sizes=(16,),
            images=args.images,
            min_time=args.min_time,
            workers=args.workers,
            on_step=log,
        )
    (args.workdir / "bench_int8.json").write_text(json.dumps(report.to_dict(), indent=2))

    m = report.machine
    print(
        f"{m['cpu']}, {m['cores']} cores, load {m['load_before']} -> {m['load_after']}; "
        f"decode {report.decode_ms:.1f} ms/film;"
        f" {report.inputs['images']} held-out films at {report.inputs['input_size']} px"
    )
    print(f"{'variant':15} {'batch':>5} {'model':>8} {'e2e':>8} {'ideal':>8} {'e2e/ideal':>9} {'top-1 vs torch':>14}")
    for r in report.rows:
        v = report.variants[r.variant]
        print(
            f"{r.variant:15} {r.batch_size:5d} {r.model_ips:8.1f} {r.e2e_ips or 0:8.1f} {r.ideal_e2e_ips or 0:8.1f} "
            f"{r.e2e_ratio or 0:9.2f} {v['top1_agreement']:14.1%}"
        )
    speed = {r.variant: r.model_ips for r in report.rows if r.batch_size == 16}
    results: list[tuple[str, bool, str]] = []
    if "openvino-int8" in speed and "onnxruntime" in speed:
        ratio = speed["openvino-int8"] / speed["onnxruntime"]
        results.append(("INT8 >= 1.8x ONNX Runtime fp32 (b16)", ratio >= 1.8, f"{ratio:.2f}x"))
        agree = report.variants["openvino-int8"]["top1_agreement"]
        results.append(("INT8 top-1 agreement with torch fp32 >= 99%", agree >= 0.99, f"{agree:.1%}"))
    a = report.auto
    if a.get("vs_fastest_fp32") is not None:
        results.append(
            (
                f"auto ({a['variant']}) >= fastest fp32 ({a['fastest_fp32']})",
                a["vs_fastest_fp32"] >= 1.0,
                f"{a['vs_fastest_fp32']:.2f}x",
            )
        )
    for r in report.rows:
        if r.e2e_ratio is not None:
            results.append(
                (f"e2e >= 0.9x ideal: {r.variant} b{r.batch_size}", r.e2e_ratio >= 0.9, f"{r.e2e_ratio:.2f}")
            )
    failed = False
    for target, ok, detail in results:
        print(f"{'PASS' if ok else 'FAIL'}  {target}: {detail}")
        failed |= not ok
    print(f"auto: {a.get('reason')}")
    print("uptime after:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
