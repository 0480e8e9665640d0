"""Shared console and error handling for the CLI (results to stdout, diagnostics to stderr)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cxrtool.errors import CxrError

out = Console()
err = Console(stderr=True)

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors a user can fix into a one-line message and exit code 2 (no traceback)."""
    try:
        yield
    except CxrError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None


def progress(transient: bool = False) -> Progress:
    """The progress bar every long command uses (on stderr, so stdout stays machine-readable)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=err,
        transient=transient,
    )
