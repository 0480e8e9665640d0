"""Issue-6 speed targets for predict, measured in one run by `cxrtool.infer.measure.run_bench`.

DenseNet121 at 224 px with seeded random weights (no trained weights exist offline), real 640 px
films from ../shared/data/covid3.  Checks, each against a baseline measured in the same run:

* end-to-end predict >= 0.9 x 1 / (decode + model) per image, for every backend and batch size (issue 13)
* ONNX Runtime >= 2x torch eager fp32, model-only, batch 16
* OpenVINO bf16 >= 3x ONNX Runtime fp32 with >= 99% top-1 agreement (only where the CPU has bf16)

Usage: .venv/bin/python bench/predict_pipeline.py [--data DIR] [--images N] [--workdir DIR]
Exit code 1 when a measurable target is missed.  Run it on a quiet machine (see `uptime`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["covid", "normal", "viral_pneumonia"]


def make_models(workdir: Path, data: Path) -> list[Path]:
    """Random-weight DenseNet121 checkpoint (seed 0) and, when ONNX Runtime is here, its ONNX export."""
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    ckpt = workdir / "densenet121_random.safetensors"
    if not ckpt.exists():
        torch.manual_seed(0)
        card = ModelCard(
            arch="densenet121", task="multiclass", class_names=CLASSES, preprocess=PreprocessCfg(input_size=224)
        )
        save_checkpoint(ckpt, build_model("densenet121", num_classes=3), card)
    models = [ckpt]
    try:
        from cxrtool.export.onnx import export_onnx
    except ImportError:
        return models
    onnx = ckpt.with_suffix(".onnx")
    if not onnx.exists():
        print(f"exporting {onnx} ...", file=sys.stderr)
        export_onnx(ckpt, onnx, check_images=[data])
    return [*models, onnx]


def check(report) -> list[tuple[str, bool | None, str]]:
    """(target, passed or None when not measurable here, numbers)."""
    results = []
    for r in report.rows:
        if r.e2e_ratio is not None:
            results.append(
                (
                    f"e2e >= 0.9 x ideal: {r.variant} b{r.batch_size}",
                    r.e2e_ratio >= 0.9,
                    f"{r.e2e_ips:.1f} vs {r.ideal_e2e_ips:.1f} img/s = {r.e2e_ratio:.2f}",
                )
            )
    speedups = {(q["variant"], q["baseline"], q["batch_size"]): q["speedup"] for q in report.ratios()}
    ort = speedups.get(("onnxruntime", "torch", 16))
    results.append(
        (
            "onnxruntime >= 2x torch (b16)",
            None if ort is None else ort >= 2.0,
            "not measured" if ort is None else f"{ort:.2f}x",
        )
    )
    ov = speedups.get(("openvino-bf16", "onnxruntime", 16))
    if ov is None:
        results.append(("openvino bf16 >= 3x onnxruntime (b16)", None, "no bf16 variant ran (CPU without bf16?)"))
    else:
        agree = report.variants["openvino-bf16"]["top1_agreement"]
        results.append(("openvino bf16 >= 3x onnxruntime (b16)", ov >= 3.0, f"{ov:.2f}x"))
        results.append(("openvino bf16 top-1 agreement >= 99%", agree >= 0.99, f"{agree:.1%}"))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "covid3")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--min-time", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cxrtool-bench"))
    args = parser.parse_args()

    from cxrtool.infer.measure import run_bench

    args.workdir.mkdir(parents=True, exist_ok=True)
    models = make_models(args.workdir, args.data)
    report = run_bench(
        models,
        data=args.data,
        batch_sizes=(1, 16),
        images=args.images,
        min_time=args.min_time,
        workers=args.workers,
        on_step=lambda t: print(f"  {t}", file=sys.stderr),
    )
    (args.workdir / "bench.json").write_text(json.dumps(report.to_dict(), indent=2))
    m = report.machine
    print(
        f"{m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, "
        f"load {m['load_before']} -> {m['load_after']}"
    )
    print(f"decode {report.decode_ms:.1f} ms/image over {report.inputs['images']} films")
    print(f"{'variant':16} {'batch':>5} {'model':>8} {'e2e':>8} {'ideal':>8} {'ratio':>6} {'top-1':>7}")
    for r in report.rows:
        v = report.variants[r.variant]
        print(
            f"{r.variant:16} {r.batch_size:5d} {r.model_ips:8.1f} {r.e2e_ips or 0:8.1f} {r.ideal_e2e_ips or 0:8.1f} "
            f"{r.e2e_ratio or 0:6.2f} {v['top1_agreement']:7.1%}"
        )
    failed = False
    for target, ok, detail in check(report):
        print(f"{'PASS' if ok else 'n/a ' if ok is None else 'FAIL'}  {target}: {detail}")
        failed |= ok is False
    print(f"full report: {args.workdir / 'bench.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
