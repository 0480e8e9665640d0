"""Reproduce the paper's transfer-learning comparison at small scale, using only ``cxrtool`` commands.

Bassi & Attux (arXiv 2005.01578) claim that twice transfer learning (ImageNet -> ChestX-ray14 ->
3 classes) helps in the first half of training, that output neuron keeping helps it further, and
that plain transfer catches up after many epochs.  This recipe trains, per seed:

* ``scratch``          random init -> 3 classes (the floor)
* ``single``           ImageNet -> 3 classes (only with ``--imagenet``; offline it *is* ``scratch``)
* ``twice``            stage-1 ChestX-ray14 checkpoint -> 3 classes, fresh head
* ``twice_keep``       the same, keeping the ``Pneumonia`` output neuron for ``viral_pneumonia``

Stage 1 (ChestX-ray14, multilabel) starts from ImageNet with ``--imagenet`` (needs the torchvision
weight file in the torch cache), else from random weights.  Everything is written under ``--out``;
generated tables, the learning-curve plot and heatmap panels go to ``--report-dir`` (``docs/reproduction/``),
which the hand-written ``docs/reproduction.md`` discusses.

Usage (from the repository root, after ``make install``)::

    .venv/bin/python examples/reproduce.py --data ../shared/data          # ~small CPU run
    .venv/bin/python examples/reproduce.py --data DATA --input-size 224 --epochs 30 --imagenet --device cuda
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("scratch", "single", "twice", "twice_keep")
KEEP_MAP = "viral_pneumonia=Pneumonia"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, default=Path("../shared/data"), help="the shared data folder (nih/, covid3_256/, covid3/)"
    )
    ap.add_argument("--out", type=Path, default=Path("runs/reproduce"))
    ap.add_argument(
        "--report-dir", type=Path, default=Path("docs/reproduction"), help="where results.md and the PNGs go"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--stage1-epochs", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--arch", default="densenet121")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--imagenet", action="store_true", help="start stage 1 and 'single' from ImageNet weights (needs them offline)"
    )
    args = ap.parse_args(argv)

    runner = Runner(args.out)
    data = args.data.resolve()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    common = [
        "--arch",
        args.arch,
        "--input-size",
        str(args.input_size),
        "--batch-size",
        str(args.batch_size),
        "--lr",
        str(args.lr),
        "--device",
        args.device,
        "--workers",
        str(args.workers),
    ]

    # 1. manifests
    nih_csv, covid_csv = out / "nih.csv", out / "covid3.csv"
    runner.cxr(
        [
            "prep",
            "nih",
            str(data / "nih" / "Data_Entry_2017_v2020.csv"),
            "--images",
            str(data / "nih" / "nih1000_64"),
            "--drop-missing",
            "-o",
            str(nih_csv),
        ],
        skip_if=nih_csv,
    )
    runner.cxr(
        [
            "prep",
            "folder",
            str(data / "covid3_256"),
            "-o",
            str(covid_csv),
            "--groups",
            str(data / "covid3" / "manifest.csv"),
            "--groups-path-col",
            "file_256",
        ],
        skip_if=covid_csv,
    )

    # 2. stage 1 (ChestX-ray14, multilabel)
    stage1 = out / "stage1"
    init1 = "imagenet" if args.imagenet else "none"
    runner.cxr(
        [
            "train",
            str(nih_csv),
            "--init",
            init1,
            "--epochs",
            str(args.stage1_epochs),
            "--seed",
            "0",
            "-o",
            str(stage1),
            *common,
        ],
        skip_if=stage1 / "log.jsonl",
        label="stage1",
        epochs=args.stage1_epochs,
    )

    # 3. stage 2 variants x seeds
    inits = {
        "scratch": ["--init", "none"],
        "single": ["--init", "imagenet"],
        "twice": ["--init", str(stage1 / "best.safetensors"), "--no-keep-neurons"],
        "twice_keep": ["--init", str(stage1 / "best.safetensors"), "--keep-neurons", "--keep-map", KEEP_MAP],
    }
    variants = [v for v in VARIANTS if v != "single" or args.imagenet]
    for seed in args.seeds:
        for variant in variants:
            run = out / f"{variant}_s{seed}"
            runner.cxr(
                [
                    "train",
                    str(covid_csv),
                    *inits[variant],
                    "--epochs",
                    str(args.epochs),
                    "--seed",
                    str(seed),
                    "--monitor",
                    "macro_f1",
                    "-o",
                    str(run),
                    *common,
                ],
                skip_if=run / "log.jsonl",
                label=f"{variant} seed {seed}",
                epochs=args.epochs,
            )

    # 4. learning curves, best model, its test metrics and heatmaps
    curves = {v: [read_log(out / f"{v}_s{s}" / "log.jsonl") for s in args.seeds] for v in variants}
    best_variant, best_seed = max(
        ((v, s) for v in variants for s in args.seeds),
        key=lambda vs: max(r["val_macro_f1"] for r in read_log(out / f"{vs[0]}_s{vs[1]}" / "log.jsonl")),
    )
    best_ckpt = out / f"{best_variant}_s{best_seed}" / "best.safetensors"
    eval_dir, explain_dir = out / "eval_best", out / "explain_best"
    runner.cxr(
        ["evaluate", str(best_ckpt), str(covid_csv), "--split", "test", "-o", str(eval_dir)],
        skip_if=eval_dir / "metrics.json",
        label="evaluate",
    )
    test_images = [str(p) for p in test_films(covid_csv)]
    runner.cxr(
        ["explain", *test_images, "--model", str(best_ckpt), "--out", str(explain_dir)],
        skip_if=explain_dir / "explain.csv",
        label="explain",
    )

    report_dir = args.report_dir
    report_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, args.seeds, report_dir / "learning_curves.png")
    write_report(args, curves, runner, best_variant, best_seed, eval_dir, explain_dir, report_dir)
    print(f"results: {report_dir / 'results.md'}")
    return 0


class Runner:
    """Runs cxrtool commands, logs their exact command lines and wall time (for the report)."""

    def __init__(self, out: Path):
        self.log: list[tuple[str, str, float]] = []
        self.timings_file = out / "timings.json"
        self.previous = json.loads(self.timings_file.read_text()) if self.timings_file.is_file() else {}

    def cxr(self, argv: list[str], *, skip_if: Path, label: str | None = None, epochs: int = 0) -> None:
        """Run ``cxrtool argv`` unless ``skip_if`` exists (for training: unless its log has all ``epochs``)."""
        label = label or " ".join(argv[:2])
        cmd = ["cxrtool", *argv]
        if skip_if.exists() and (not epochs or len(read_log(skip_if)) >= epochs):
            self.log.append((label, shlex.join(cmd), self.previous.get(label, float("nan"))))
            print(f"[skip] {label}: {skip_if} exists", file=sys.stderr)
            return
        print(f"[run] {shlex.join(cmd)}", file=sys.stderr, flush=True)
        t0 = time.time()
        subprocess.run([sys.executable, "-m", "cxrtool", *argv], check=True)
        seconds = time.time() - t0
        self.log.append((label, shlex.join(cmd), seconds))
        self.previous[label] = seconds
        self.timings_file.write_text(json.dumps(self.previous, indent=1))


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_films(manifest: Path) -> dict[Path, str]:
    """Test-split films of a manifest (resolved paths) with their labels."""
    from cxrtool.manifest import read_manifest

    test = read_manifest(manifest).select("test")
    return {test.resolve(r): r["label"] for r in test.rows}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot_curves(curves: dict[str, list[list[dict]]], seeds: list[int], dst: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for ax, key, title in zip(axes, ("val_accuracy", "val_macro_f1"), ("validation accuracy", "validation macro-F1")):
        for variant, runs in curves.items():
            n = min(len(r) for r in runs)
            vals = np.array([[r[i][key] for i in range(n)] for r in runs])
            x = np.arange(1, n + 1)
            mean, sd = vals.mean(0), vals.std(0)
            ax.plot(x, mean, label=variant)
            ax.fill_between(x, mean - sd, mean + sd, alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_title(f"{title} (mean ± sd over {len(seeds)} seeds)")
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(dst)
    plt.close(fig)


def write_report(args, curves, runner, best_variant, best_seed, eval_dir, explain_dir, report_dir) -> None:
    """Write ``<report_dir>/results.md`` (generated numbers); the discussion lives in the hand-written report."""
    import csv

    import numpy as np
    from PIL import Image

    from cxrtool.explain.render import heatmap_rgb, symmetric_scale

    n_epochs = min(len(r) for runs in curves.values() for r in runs)
    half = max(1, n_epochs // 2)
    lines = [
        "# Reproduction results (generated by `examples/reproduce.py`; do not edit)",
        "",
        f"Settings: `{args.arch}`, input {args.input_size} px, stage 1 {args.stage1_epochs} epochs, "
        f"stage 2 {args.epochs} epochs, "
        f"batch {args.batch_size}, lr {args.lr}, seeds {args.seeds}, "
        f"ImageNet init: {'yes' if args.imagenet else 'no (offline: --init none)'}. "
        f"Total wall time {sum(sec for _, _, sec in runner.log) / 60:.1f} min on this machine (sum of the steps below; "
        "they ran beside other work, so treat it as an upper bound).",
        "",
        f"Validation metrics per variant, mean ± sd over seeds: mean over the first {half} epochs, "
        f"at the last epoch ({n_epochs}), and best epoch.",
        "",
        "| variant | acc first half | acc last | acc best | macro-F1 first half | macro-F1 last | macro-F1 best |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, runs in curves.items():
        cells = [variant]
        for key in ("val_accuracy", "val_macro_f1"):
            first_half = [statistics.fmean(r[i][key] for i in range(half)) for r in runs]
            last = [r[n_epochs - 1][key] for r in runs]
            best = [max(x[key] for x in r[:n_epochs]) for r in runs]
            cells += [f"{m:.3f} ± {sd:.3f}" for m, sd in map(_mean_sd, (first_half, last, best))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Per-epoch validation macro-F1 (mean over seeds):",
        "",
        "| epoch | " + " | ".join(curves) + " |",
        "|---" * (len(curves) + 1) + "|",
    ]
    for i in range(n_epochs):
        lines.append(
            f"| {i + 1} | "
            + " | ".join(f"{statistics.fmean(r[i]['val_macro_f1'] for r in runs):.3f}" for runs in curves.values())
            + " |"
        )
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    lines += [
        "",
        f"Best run by validation macro-F1: `{best_variant}` seed {best_seed}. "
        "Its test-split metrics (`cxrtool evaluate`):",
        "",
        "```json",
        json.dumps(metrics, indent=1, default=str)[:3000],
        "```",
        "",
    ]
    with open(explain_dir / "explain.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ok = [r for r in rows if not r.get("error")]
    lines += [
        "Shortcut audit of the best model on the test films (`cxrtool explain`): mean share of positive relevance "
        "per region, and that share divided by the region's area (1.0 = what a uniform heatmap gives).",
        "",
        "| target | n | border band | / uniform | outside lung box | / uniform |",
        "|---|---|---|---|---|---|",
    ]
    for target in sorted({r["target"] for r in ok}):
        sel = [r for r in ok if r["target"] == target]
        cells = [target, str(len(sel))]
        for share, area in (("pos_share_border", "area_border"), ("pos_share_outside_lung", "area_outside_lung")):
            m = statistics.fmean(float(r[share]) for r in sel)
            cells += [f"{m:.3f}", f"{m / statistics.fmean(float(r[area]) for r in sel):.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += _shortcut_lines(args, explain_dir, ok)
    lines += [
        "Relevance maps of the best model on the first two test films of each true class (`cxrtool explain`, "
        "target = predicted class; red for, blue against). Only the relevance is copied here, not the films: the "
        "data's licences do not allow redistributing them; the full panels are in the run's explain folder.",
        "",
    ]
    truth = [(path.stem, label) for path, label in test_films(args.out / "covid3.csv").items()]
    for label in sorted({t for _, t in truth}):
        for stem in [s for s, t in truth if t == label][:2]:
            for src in sorted(explain_dir.rglob(f"{stem}.*.heatmap.npy"))[:1]:
                relevance = np.load(src)
                rgb = heatmap_rgb(relevance, symmetric_scale(relevance))
                dst = report_dir / f"heatmap_{label}_{stem}.png"
                Image.fromarray(rgb).resize((192, 192), Image.Resampling.NEAREST).save(dst)
                lines.append(f"![{label} {stem}]({dst.name})")
    lines += [
        "",
        "![learning curves](learning_curves.png)",
        "",
        "## Exact commands",
        "",
        "| step | seconds | command |",
        "|---|---|---|",
    ]
    for label, cmd, sec in runner.log:
        if len(cmd) > 400:  # explain lists every test film: show the shape of the command, not 47 paths
            head, _, tail = cmd.partition(" --model ")
            cmd = " ".join(head.split()[:3]) + f" … ({len(head.split()) - 2} test films) --model " + tail
        lines.append(f"| {label} | {sec:.0f} | `{cmd}` |")
    (report_dir / "results.md").write_text("\n".join(lines) + "\n")


def _shortcut_lines(args, explain_dir, ok) -> list[str]:
    """Data-side shortcut audit (``cxrtool.trust.shortcut``) of the test films: probes on true and predicted classes."""
    import numpy as np

    from cxrtool.config import PreprocessCfg
    from cxrtool.preprocess import load_gray
    from cxrtool.trust.shortcut import map_comparison, probe, summary_lines, thumbnail

    cfg = PreprocessCfg(input_size=args.input_size)
    truth = test_films(args.out / "covid3.csv")
    own = [r for r in ok if r["target"] == r["predicted"]]
    thumbs = np.stack([thumbnail(load_gray(Path(r["path"]), cfg)) for r in own])
    labels = np.array([truth.get(Path(r["path"]).resolve(), "") for r in own])
    lines = [
        "Data-side shortcut audit of the same films (`cxrtool.trust.shortcut`: cross-validated linear probes on "
        "8x8 thumbnails, which keep no lung detail; balanced accuracy vs chance):",
        "",
    ]
    for name, y in (
        ("true class", labels),
        ("adult (covid) vs child (normal, viral)", np.where(labels == "covid", "adult", "child")),
        ("normal vs viral (both children)", labels),
    ):
        keep = labels != "covid" if name.startswith("normal") else np.ones(len(labels), bool)
        if (p := probe(thumbs[keep], y[keep], "8x8 thumbnail", name)) is not None:
            lines.append(f"- {p.line()}")
    audit = {"probes": [], "maps": map_comparison([np.load(r["heatmap"]) for r in own], [r["predicted"] for r in own])}
    lines += [f"- {line}" for line in summary_lines(audit)] + [""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
