"""``cxrtool bench``: images/s of every available backend and batch size, with ratios (thin wrapper)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from cxrtool.cli._console import err, out, user_errors
from cxrtool.cli._options import BenchBackend, device_option
from cxrtool.infer.options import BENCH_BATCH_SIZES, BENCH_IMAGES, BENCH_MIN_TIME


def bench(
    model: Annotated[
        list[Path], typer.Option("--model", "-m", help="Checkpoint and/or exported ONNX file (repeat the option).")
    ],
    data: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder of real films: decode time, end-to-end predict and top-1 agreement.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    backend: Annotated[
        Optional[list[BenchBackend]],
        typer.Option(show_default="all available", help="Only these backends (repeatable)."),
    ] = None,
    batch_size: Annotated[
        Optional[list[int]],
        typer.Option(
            "--batch-size",
            "-b",
            min=1,
            show_default=" and ".join(map(str, BENCH_BATCH_SIZES)),
            help="Batch sizes (repeatable).",
        ),
    ] = None,
    images: Annotated[int, typer.Option(min=0, help="Films sampled evenly from --data (0 = all).")] = BENCH_IMAGES,
    min_time: Annotated[
        float, typer.Option(min=0.0, help="Seconds of timed model-only runs per row.")
    ] = BENCH_MIN_TIME,
    workers: Annotated[
        Optional[int],
        typer.Option(min=0, show_default="predict's choice per backend", help="Decode processes for end-to-end runs."),
    ] = None,
    device: Annotated[str, typer.Option(callback=device_option(auto=False), help="cpu, cuda or cuda:N.")] = "cpu",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the full report as JSON on stdout instead of tables.")
    ] = False,
    save: Annotated[
        bool,
        typer.Option(
            "--save", help="Store the model-only speeds for this machine; `--backend auto` then picks by them."
        ),
    ] = False,
) -> None:
    """Measure model-only and end-to-end images/s for every available backend and batch size, in one run."""
    from rich.table import Table

    from cxrtool.infer.measure import run_bench

    with user_errors(), err.status(Text("bench")) as status:
        report = run_bench(
            model,
            data=data,
            backends=[b.value for b in backend] if backend else None,
            batch_sizes=tuple(batch_size or BENCH_BATCH_SIZES),
            images=images,
            min_time=min_time,
            workers=workers,
            device=device,
            save=save,
            on_step=lambda text: status.update(Text(f"bench: {text}")),
        )
    if report.inputs.get("unreadable_skipped"):
        err.print(f"skipped {report.inputs['unreadable_skipped']} unreadable file(s) under {data}", soft_wrap=True)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
        return

    m = report.machine
    table = Table(
        title="images/s: model-only (median run), end-to-end predict, ideal 1/(decode+model); top-1 agreement",
        caption=f"{m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, "
        f"load {m['load_before']} -> {m['load_after']}; decode {_fmt(report.decode_ms, '.1f')} ms/image",
        title_justify="left",
        caption_justify="left",
    )
    table.add_column("variant", no_wrap=True)
    for col in ("batch", "model", "e2e", "ideal", "e2e/ideal", "top-1", "max|dz|"):
        table.add_column(col, justify="right")
    for r in report.rows:
        v = report.variants[r.variant]
        table.add_row(
            r.variant,
            str(r.batch_size),
            f"{r.model_ips:.1f}",
            _fmt(r.e2e_ips, ".1f"),
            _fmt(r.ideal_e2e_ips, ".1f"),
            _fmt(r.e2e_ratio, ".2f"),
            "reference" if v.get("reference") else f"{v['top1_agreement']:.1%}",
            f"{v['max_abs_logit_diff']:.3g}",
        )
    out.print(table)
    if report.ratios():
        ratios = Table(title="model-only speed-ups", title_justify="left")
        for col in ("variant", "vs", "batch", "speed-up"):
            ratios.add_column(col)
        for q in report.ratios():
            ratios.add_row(q["variant"], q["baseline"], str(q["batch_size"]), f"{q['speedup']:.2f}x")
        out.print(ratios)
    if report.auto:
        a = report.auto
        versus = f", {a['vs_fastest_fp32']:.2f}x the fastest fp32 ({a['fastest_fp32']})" if a["vs_fastest_fp32"] else ""
        out.print(
            f"auto picks {a['variant']} (batch {a['batch_size']}{versus}): {a['reason']}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if report.saved_to:
        err.print(
            f"saved the speeds for `--backend auto` to {report.saved_to}", markup=False, highlight=False, soft_wrap=True
        )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the root app."""
    app.command(no_args_is_help=True)(bench)
