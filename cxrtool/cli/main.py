"""Root Typer app: ``cxrtool --version``, ``doctor`` and the command groups."""

from __future__ import annotations

import typer

from cxrtool import __version__
from cxrtool.cli import bench, explain, export, predict, prep, train
from cxrtool.cli._console import out

app = typer.Typer(
    name="cxrtool",
    help="Chest X-ray COVID-19 / viral pneumonia / normal classification with LRP heatmaps.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"cxrtool {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version, is_eager=True),
) -> None:
    """Chest X-ray COVID-19 / viral pneumonia / normal classification with LRP heatmaps."""


@app.command()
def doctor() -> None:
    """Show the environment: library versions, GPUs, ONNX Runtime / OpenVINO / TensorRT, DICOM codecs."""
    from rich.table import Table

    from cxrtool.envinfo import collect

    for title, rows in collect().items():
        table = Table(title=title, title_justify="left")
        table.add_column("item")
        table.add_column("value")
        table.add_column("ok", justify="center")
        for item, value, ok in rows:
            table.add_row(item, value, {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[ok])
        out.print(table)


for _module in (prep, train, export, predict, explain, bench):
    _module.register(app)
