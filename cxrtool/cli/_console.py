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
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from cxrtool.errors import CxrError, one_line

#: Width when output goes to a pipe or file and $COLUMNS is unset: lines are never wrapped (Rich would use 80).
PIPED_WIDTH = 10_000


def _console(stderr: bool) -> Console:
    """A terminal's own width; piped, no wrapping at all, so a table row or a path stays one line for grep."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not (stream.isatty() or os.environ.get("COLUMNS"))
    return Console(stderr=stderr, markup=False, highlight=False, width=PIPED_WIDTH if piped else None)


out = _console(stderr=False)
err = _console(stderr=True)

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
        Text.assemble(
            ("internal error:", "bold red"),
            f" {type(exc).__name__}: {one_line(exc)} ({where}{hint}). This is a bug in cxrtool.",
        ),
        soft_wrap=True,
    )
    return EXIT_INTERNAL


#: Piped (CI, a log file), a long step prints one plain progress line at most this often.
PLAIN_EVERY_S = 10.0


class _Count(ProgressColumn):
    """``28/120`` when the total is known, else ``28`` (never ``28/?``)."""

    def render(self, task: Task) -> Text:
        done = int(task.completed)
        return Text(f"{done}/{int(task.total)}" if task.total is not None else str(done), style="progress.download")


class _Progress(Progress):
    """Rich's live bar on a terminal; piped, one plain line per task at most every :data:`PLAIN_EVERY_S` and at the end.

    It starts on the first progress (``lazy``), so an error before any work comes without an empty bar above it.
    """

    def __init__(self, *columns: Any, lazy: bool, **kwargs: Any) -> None:
        super().__init__(*columns, disable=not kwargs["console"].is_terminal, **kwargs)
        self._lazy, self._begun, self._last_line = lazy, False, {}

    def start(self) -> None:
        if not self._lazy or self._begun:
            super().start()

    def stop(self) -> None:
        for task_id in self.task_ids if self.disable else ():
            self._plain_line(task_id, final=True)
        super().stop()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        self._begin()
        super().advance(task_id, advance)
        self._plain_line(task_id)

    def update(self, task_id: TaskID, **kwargs: Any) -> None:
        if "completed" in kwargs or "advance" in kwargs:
            self._begin()
        super().update(task_id, **kwargs)
        self._plain_line(task_id)

    def _begin(self) -> None:
        if not self._begun:
            self._begun = True
            self.start()

    def _plain_line(self, task_id: TaskID, *, final: bool = False) -> None:
        if not self.disable or not self._begun:
            return
        now = time.monotonic()
        last = self._last_line.get(task_id)
        task = self._tasks[task_id]
        if final:
            if last == "done" or not task.completed:
                return
        elif last is not None and (last == "done" or now - last < PLAIN_EVERY_S):
            return
        count = f"{int(task.completed)}/{int(task.total)}" if task.total is not None else str(int(task.completed))
        info = task.fields.get("info") or ""
        elapsed = _dt.timedelta(seconds=int(task.elapsed or 0))
        self.console.print(f"{task.description}: {count}, {elapsed}  {info}".rstrip(), soft_wrap=True)
        self._last_line[task_id] = "done" if final else now


def progress(transient: bool = False, *, lazy: bool = False) -> Progress:
    """The progress display every long command uses (on stderr, so stdout stays machine-readable).

    ``lazy``: show nothing until the first step is done (commands that load a model first).
    """
    return _Progress(
        TextColumn("{task.description}", markup=False, style="progress.description"),
        BarColumn(),
        _Count(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        console=err,
        transient=transient,
        lazy=lazy,
    )
