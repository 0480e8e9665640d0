"""``cxrtool bench``: images/s of every available backend and batch size, with ratios (thin wrapper)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrtool.cli._console import err, out, user_errors


def bench(
    model: Annotated[list[Path], typer.Option("--model", "-m", help="Checkpoint and/or exported ONNX file (repeat the option).")],
    data: Annotated[Optional[Path], typer.Option(help="Folder of real films: decode time, end-to-end predict and top-1 agreement.", exists=True, file_okay=False)] = None,
    backend: Annotated[Optional[list[str]], typer.Option(help="Only these backends (repeatable; default all available).")] = None,
    batch_size: Annotated[Optional[list[int]], typer.Option("--batch-size", "-b", min=1, help="Batch sizes (repeatable; default 1 and 16).")] = None,
    images: Annotated[int, typer.Option(min=0, help="Films sampled evenly from --data (0 = all).")] = 128,
    min_time: Annotated[float, typer.Option(min=0.0, help="Seconds of timed model-only runs per row.")] = 3.0,
    workers: Annotated[Optional[int], typer.Option(min=0, help="Decode processes for end-to-end runs (default: cores - 1).")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda[:N].")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON on stdout instead of tables.")] = False,
) -> None:
    """Measure model-only and end-to-end images/s for every available backend and batch size, in one run."""
    from rich.table import Table

    from cxrtool.infer.bench import run_bench

    with user_errors(), err.status("bench") as status:
        report = run_bench(
            model,
            data=data,
            backends=backend,
            batch_sizes=tuple(batch_size or (1, 16)),
            images=images,
            min_time=min_time,
            workers=workers,
            device=device,
            on_step=lambda text: status.update(f"bench: {text}"),
        )
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


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def register(app: typer.Typer) -> None:
    """Add ``bench`` to the root app."""
    app.command(no_args_is_help=True)(bench)
