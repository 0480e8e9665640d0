"""Root Typer app: ``cxrtool --version``, ``--debug``, ``doctor`` and the command groups.

Exit codes mean one thing each (:mod:`cxrtool.cli._console`): 0 all good, 1 some inputs failed,
2 usage error, 3 unexpected internal error.  :class:`_Root` is the single place that turns an
unexpected exception from any command into code 3 plus a crash log.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from cxrtool import __version__
from cxrtool.cli import bench, calibrate, demo, explain, export, listen, predict, prep, report, train
from cxrtool.cli._console import DEBUG_ENV, EXIT_USAGE, err, error, out, report_internal_error, styled
from cxrtool.errors import CxrError

#: Exceptions that already mean a chosen exit code (usage errors, typer.Exit, Ctrl-C, a closed pipe).
_PASS_THROUGH = (typer.TyperException, typer.Exit, typer.Abort, KeyboardInterrupt, EOFError, BrokenPipeError)


class _Root(TyperGroup):
    """The root group: every command runs inside :meth:`invoke`, so one handler covers them all."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except CxrError as exc:  # a user-fixable error that a command did not catch itself
            err.print(error(str(exc)), soft_wrap=True)
            raise typer.Exit(EXIT_USAGE) from None
        except Exception as exc:
            raise typer.Exit(report_internal_error(exc, debug=bool(ctx.params.get("debug")))) from None


app = typer.Typer(
    name="cxrtool",
    cls=_Root,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help text is printed literally: "[default: ...]", "[trt]" and file names stay intact
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        out.print(f"cxrtool {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)] = False,
    debug: Annotated[
        bool, typer.Option("--debug", envvar=DEBUG_ENV, help="On an internal error (exit 3) also print the traceback here.")
    ] = False,
) -> None:
    """Chest X-ray COVID-19 / viral pneumonia / normal classification with LRP heatmaps.

    Exit codes: 0 all good, 1 some inputs failed (each named with its reason), 2 usage error,
    3 internal error (a bug; the traceback goes to a log file whose path is printed).
    """


@app.command()
def doctor() -> None:
    """Show the environment: library versions, GPUs, ONNX Runtime / OpenVINO / TensorRT, DICOM codecs."""
    from rich.table import Table

    from cxrtool.envinfo import collect

    marks = {True: styled("yes", "green"), False: styled("no", "red"), None: ""}
    for title, rows in collect().items():
        table = Table(title=title, title_justify="left")
        table.add_column("item")
        table.add_column("value")
        table.add_column("ok", justify="center")
        for item, value, ok in rows:
            table.add_row(item, value, marks[ok])
        out.print(table)


for _module in (prep, train, calibrate, export, predict, explain, bench, report, demo, listen):
    _module.register(app)
