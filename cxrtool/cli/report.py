"""``cxrtool report``: predict rows (+ explain heatmaps, + model card) -> one static HTML page (thin wrapper)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrtool.cli._console import err, out, user_errors


def report(
    predictions: Annotated[
        Path, typer.Argument(help="A predict output (.csv or .jsonl).", exists=True, dir_okay=False)
    ],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="HTML file to write (atomically).", dir_okay=False)],
    explain_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--explain",
            help="An explain output folder: adds each film's heatmap overlay.",
            exists=True,
            file_okay=False,
        ),
    ] = None,
    model: Annotated[
        Optional[Path],
        typer.Option(
            "--model", "-m", help="Checkpoint, ONNX export or engine: adds its model card.", exists=True, dir_okay=False
        ),
    ] = None,
    title: Annotated[
        Optional[str], typer.Option(show_default="the predictions file's name", help="Page title.")
    ] = None,
    caveat: Annotated[
        Optional[list[str]], typer.Option("--caveat", help="A line shown in a warning box at the top (repeatable).")
    ] = None,
    thumb_size: Annotated[int, typer.Option(help="Thumbnail side in px.", min=16)] = 112,
) -> None:
    """Write a self-contained HTML report: summary, model card, sortable table of films with heatmaps, error rows."""
    from cxrtool.modelfile.loaded import open_model
    from cxrtool.report.html import build_report

    with user_errors():
        loaded = open_model(model) if model is not None else None
        result = build_report(
            predictions,
            out_path,
            explain_dir=explain_dir,
            model=loaded,
            title=title,
            caveats=caveat or (),
            thumb_size=thumb_size,
        )
    err.print(
        f"{result.rows} rows: {result.rows - result.errors} predicted, "
        f"{result.errors} unreadable, {result.flagged} flagged; "
        f"{result.thumbnails} thumbnails, {result.overlays} heatmaps embedded",
        soft_wrap=True,
    )
    out.print(str(result.path), soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``report`` to the root app."""
    app.command("report", no_args_is_help=True)(report)
