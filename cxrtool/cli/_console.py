"""Shared console, exit codes and error reporting for the CLI (results to stdout, diagnostics to stderr).

Both consoles have Rich markup switched off: file names, library messages and user values are
printed exactly as they are (``scan[1].png`` stays ``scan[1].png``).  Colour is added only through
``Text`` objects built here (:func:`styled`, :func:`error`, :func:`failed`, :func:`warning`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from cxrtool.errors import CxrError, one_line

out = Console(markup=False, highlight=False)
err = Console(stderr=True, markup=False, highlight=False)

#: 0 all good, 1 some inputs failed (each named), 2 usage error, 3 unexpected internal error (a bug).
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
#: ``CXRTOOL_DEBUG=1`` (or ``cxrtool --debug``) prints an internal error's traceback on stderr too.
DEBUG_ENV = "CXRTOOL_DEBUG"
#: Where crash logs go when set; else ``$XDG_STATE_HOME/cxrtool/crash`` (``~/.local/state/...``).
LOG_DIR_ENV = "CXRTOOL_LOG_DIR"


def styled(text: str, style: str) -> Text:
    """``text`` in ``style``, never parsed as markup."""
    return Text(text, style=style)


def error(message: str) -> Text:
    """``error: message`` with the prefix in bold red and the message literal."""
    return Text.assemble(("error:", "bold red"), " ", message)


def warning(message: str) -> Text:
    return Text.assemble(("warning:", "yellow"), " ", message)


def failed(path: object, reason: str) -> Text:
    """One line per input that could not be processed: ``failed: PATH: reason``."""
    return Text.assemble(("failed:", "red"), f" {path}: {reason}")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn library errors a user can fix into a one-line message and exit code 2 (no traceback)."""
    try:
        yield
    except CxrError as exc:
        err.print(error(str(exc)), soft_wrap=True)
        raise typer.Exit(EXIT_USAGE) from None


def crash_log_dir() -> Path:
    if os.environ.get(LOG_DIR_ENV):
        return Path(os.environ[LOG_DIR_ENV])
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "cxrtool" / "crash"


def report_internal_error(exc: BaseException, *, debug: bool) -> int:
    """One line saying cxrtool failed, the traceback in a log file (and on stderr with ``debug``).

    Returns :data:`EXIT_INTERNAL`, so a script can tell a crash from a bad input (1) or a usage error (2).
    """
    from cxrtool import __version__

    stamp = _dt.datetime.now(_dt.timezone.utc)
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = (
        f"cxrtool {__version__} internal error at {stamp.isoformat(timespec='seconds')}\n"
        f"python {sys.version.split()[0]}; argv: {sys.argv!r}\n\n{tb}"
    )
    name = f"crash-{stamp:%Y%m%dT%H%M%S}-{os.getpid()}.log"
    log: Path | None = None
    for folder in (crash_log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8", errors="backslashreplace")
            log = folder / name
            break
        except OSError:
            continue
    if debug:
        err.print(Text(tb.rstrip()), soft_wrap=True)
    where = f"traceback written to {log}" if log else "the traceback could not be written to a log file"
    hint = "" if debug else f"; --debug or {DEBUG_ENV}=1 shows it here"
    err.print(
        Text.assemble(("internal error:", "bold red"), f" {type(exc).__name__}: {one_line(exc)} ({where}{hint}). This is a bug in cxrtool."),
        soft_wrap=True,
    )
    return EXIT_INTERNAL


def progress(transient: bool = False) -> Progress:
    """The progress bar every long command uses (on stderr, so stdout stays machine-readable)."""
    return Progress(
        TextColumn("{task.description}", markup=False, style="progress.description"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        console=err,
        transient=transient,
    )
