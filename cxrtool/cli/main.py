"""Root Typer app: ``cxrtool --version``, ``--debug``, ``doctor`` and the command groups.

Exit codes mean one thing each (:mod:`cxrtool.cli._console`): 0 all good, 1 some inputs failed,
2 usage error, 3 unexpected internal error.  :class:`_Root` is the single place that turns an
unexpected exception from any command into code 3 plus a crash log.

Command modules are imported only when their command runs (or shows its help): ``cxrtool --help``
lists the one-line summaries of :data:`COMMANDS` and imports none of them, so no command's
dependencies slow down another's start.
"""

from __future__ import annotations

import importlib
import signal
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from cxrtool import __version__
from cxrtool.cli._console import DEBUG_ENV, EXIT_USAGE, err, error, out, report_internal_error, styled
from cxrtool.cli._help import plain_help, tidy
from cxrtool.errors import CxrError

if TYPE_CHECKING:
    import click

#: Exceptions that already mean a chosen exit code (usage errors, typer.Exit, Ctrl-C, a closed pipe).
_PASS_THROUGH = (typer.TyperException, typer.Exit, typer.Abort, KeyboardInterrupt, EOFError, BrokenPipeError)


#: command -> (module of ``cxrtool.cli`` whose ``register(app)`` adds it, summary for ``cxrtool --help``).
COMMANDS: dict[str, tuple[str, str]] = {
    "prep": ("prep", "Prepare data: DICOM -> PNG, public datasets and class folders -> manifests."),
    "train": ("train", "Train a DenseNet on a manifest (with its trust statistics)."),
    "evaluate": ("train", "Metrics of a checkpoint on a manifest split."),
    "calibrate": ("calibrate", "Refit a checkpoint's temperature, OOD statistics and threshold."),
    "export": ("export", "Export a checkpoint to ONNX, INT8 and/or a TensorRT engine."),
    "predict": ("predict", "Predict films and folders into a CSV or JSONL file."),
    "explain": ("explain", "LRP heatmaps, overlays and the shortcut audit."),
    "bench": ("bench", "Measure images/s of every available backend."),
    "report": ("report", "One self-contained HTML page from predict (and explain) output."),
    "demo": ("demo", "The whole workflow on a small bundled sample."),
    "listen": ("listen", "Receive films over DICOM and send back SR + heatmap results."),
}


class _Root(TyperGroup):
    """The root group: every command runs inside :meth:`invoke`, so one handler covers them all."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        return plain_help(super().get_help_option(ctx))

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*(name for name in super().list_commands(ctx) if name not in COMMANDS), *COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module = importlib.import_module(f"cxrtool.cli.{COMMANDS[cmd_name][0]}")
            sub = typer.Typer(rich_markup_mode=None, add_completion=False)
            module.register(sub)
            self.commands.update({name: tidy(cmd) for name, cmd in typer.main.get_group(sub).commands.items()})
        elif cmd_name in self.commands:
            tidy(self.commands[cmd_name])  # doctor, defined here
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The summaries without importing any command module (``doctor`` is defined here)."""
        rows = [(name, cmd.get_short_help_str(200)) for name, cmd in self.commands.items() if name not in COMMANDS]
        rows += [(name, summary) for name, (_, summary) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:  # a usage error: drop pydantic's "Value error, " from the message
            if isinstance(getattr(exc, "message", None), str):
                exc.message = exc.message.replace("Value error, ", "")
            raise
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
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True)
    ] = False,
    debug: Annotated[
        bool,
        typer.Option("--debug", envvar=DEBUG_ENV, help="On an internal error (exit 3) also print the traceback here."),
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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run() -> None:
    """The ``cxrtool`` program (console script and ``python -m cxrtool``).

    SIGTERM (``kill``, ``timeout``, a service manager) unwinds like Ctrl-C (exit 130): decode pools, temporary
    folders and output locks are closed on the way out, not left to multiprocessing's resource tracker.  Commands
    that stop more gently (``train`` saves, ``listen`` finishes its film) install their own handlers.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    app(prog_name="cxrtool")
