"""``cxrtool explain``: LRP heatmaps, overlays, panels and the shortcut audit for films and folders."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path

import typer

from cxrtool.explain.composites import COMPOSITES, DEFAULT_COMPOSITE

Composite = Enum("Composite", {name: name for name in COMPOSITES}, type=str)  # choices come from the registry


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("explain")(explain)


def explain(
    paths: list[Path] = typer.Argument(..., help="Films (PNG/JPEG/DICOM...) or folders of them.", exists=True),
    model: Path = typer.Option(..., "--model", "-m", help="cxrtool checkpoint (.safetensors)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (created; inputs are never modified)."),
    target: str = typer.Option("predicted", "--target", "-t", help="'predicted', 'all', or a class name."),
    composite: Composite = typer.Option(DEFAULT_COMPOSITE, "--composite", "-c", help="LRP composite (or 'gradient' x input)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", min=1, help="Films per forward/backward pass."),
    border: float = typer.Option(0.08, "--border", help="Audit border band, as a fraction of the side."),
) -> None:
    """Explain predictions with LRP: heatmap .npy, overlay and panel PNGs, explain.csv, shortcut-audit table.

    Exit codes: 0 all explained, 1 some files could not be read (error rows in explain.csv), 2 usage error.
    """
    from rich.table import Table

    from cxrtool.cli._console import EXIT_SOME_FAILED, err, out as stdout, progress, user_errors
    from cxrtool.explain.attribution import ExplainOptions, explain_files, plan_inputs
    from cxrtool.explain.audit import AuditCfg
    from cxrtool.models.checkpoint import load_checkpoint

    with user_errors():
        net, card = load_checkpoint(model)
        try:
            options = ExplainOptions(composite=composite.value, target=target, batch_size=batch_size, audit=AuditCfg(border=border))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        plan = plan_inputs(paths)
        total = len(plan)
        with progress() as bar:
            task = bar.add_task("explain", total=total, info="")

            def on_file(path: Path, error: str | None) -> None:
                bar.advance(task)
                if error:
                    err.print(f"[red]failed:[/] {path}: {error}", highlight=False, soft_wrap=True)

            report = explain_files(plan, net, card, out, options, on_file=on_file)

    table = Table(title=f"Shortcut audit ({composite.value}): share of positive relevance", title_justify="left")
    for col in ("target", "n", "border", "x uniform", "outside lung box", "x uniform"):
        table.add_column(col, justify="left" if col == "target" else "right")
    for row in report.summary:
        fmt = lambda v: "-" if isinstance(v, float) and math.isnan(v) else f"{v:.2f}"  # noqa: E731
        table.add_row(str(row["target"]), str(row["n"]), fmt(row["mean_share_border"]), fmt(row["ratio_border"]),
                      fmt(row["mean_share_outside_lung"]), fmt(row["ratio_outside_lung"]))
    stdout.print(table)
    stdout.print(f"results: {report.csv_path}", highlight=False, soft_wrap=True)
    if report.n_failed:
        err.print(f"{report.n_failed} of {total} files failed", highlight=False)
        raise typer.Exit(EXIT_SOME_FAILED)
