"""``cxrtool demo``: the whole workflow on the bundled sample, each step printed (thin wrapper)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrtool.cli._console import err, out, styled, user_errors


def demo(
    directory: Annotated[
        Path, typer.Argument(help="Output folder (created; an earlier demo there is replaced).", file_okay=False)
    ] = Path("cxrtool-demo"),
) -> None:
    """Run prep dicom, prep nih, stage-1 and stage-2 training, evaluate, export, predict, explain and the HTML report
    on a small licence-clean sample that ships with cxrtool. It demonstrates the workflow; its model is not
    diagnostic."""
    from cxrtool.demo.workflow import CAVEAT, run_demo

    err.print(styled(CAVEAT, "bold yellow"), soft_wrap=True)

    def step(number: int, total: int, title: str, detail: str) -> None:
        err.print(styled(f"[{number}/{total}] {title}: ", "bold"), detail, sep="", soft_wrap=True)

    with user_errors():
        result = run_demo(directory, on_step=step, on_note=lambda line: err.print(f"      {line}", soft_wrap=True))
    out.print(str(result.report), soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the root app."""
    app.command("demo")(demo)
