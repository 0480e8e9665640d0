"""One run per output: a second run on the same output file or folder refuses at once.

Two ``predict`` runs appending to one file, or two ``--resume`` runs reading the same "already
done" set, lose, tear or duplicate rows.  Every command's core function therefore holds
:func:`owned_output` on its output for the whole run.  The lock is an ``flock`` taken through the
``filelock`` library on a small hidden file beside the output (``.preds.csv.lock`` for
``preds.csv``, ``.heatmaps.lock`` for the folder ``heatmaps/``; beside, not inside, so an output
folder holds only what the command writes), and the owner's pid is written into it, so the
refusal can name the run to wait for.  The kernel drops an ``flock`` when its process dies, however it dies,
so a lock left by a killed run is simply taken over by the next one (which notes the dead pid).
The lock file itself stays (empty when no run holds it): removing it on release would let two
later runs lock two different files.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from cxrtool.errors import CxrError, one_line
from cxrtool.fsutil import display_path
from cxrtool.workers import pid_alive

#: how long a refused run waits for the owner to write its pid (it does so right after locking)
PID_WAIT_S = 1.0


class OutputBusy(CxrError):
    """The output is owned by another live run (a usage error: exit 2)."""

    def __init__(self, path: Path, owner: int | None):
        self.path, self.owner = path, owner
        if owner is None:
            who = "a process whose pid could not be read"
        elif pid_alive(owner):
            who = f"pid {owner}"
        else:  # the run is gone but a child it started still holds the lock
            who = f"a leftover child process of pid {owner}, which has exited"
        super().__init__(
            f"{display_path(path)}: in use by another cxrtool run ({who}); "
            "wait for it to finish or choose another output"
        )


@dataclass
class Ownership:
    """What :func:`owned_output` yields: the lock file, and the dead run it took over from, if any."""

    lock_file: Path
    taken_over_from: int | None = None


def lock_path(path: str | Path) -> Path:
    """Where the lock of output ``path`` (a file or a folder) lives: ``.NAME.lock`` beside it.

    The path is resolved first, so two spellings of one output (``out.csv``, ``./x/../out.csv``, a
    symlink) share one lock.
    """
    path = Path(path).resolve()
    return path.parent / f".{path.name or 'root'}.lock"


@contextlib.contextmanager
def owned_output(path: str | Path) -> Iterator[Ownership]:
    """Hold output ``path`` (a file or a folder) for this run; refuse at once if another live run holds it.

    The folder that holds the output is created if missing (the lock lives there).

    Raises
    ------
    OutputBusy
        Another run owns ``path``; the message names its pid.
    CxrError
        The lock cannot be made there (read-only or missing permissions).
    """
    lock_file = lock_path(path)
    owned = Ownership(lock_file)
    held_fd: list[int] = []

    def stamp(fd: int) -> None:  # runs with the flock held, before any other run can read the file
        owned.taken_over_from = _read_pid(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        held_fd.append(fd)

    lock = FileLock(lock_file, timeout=0, on_acquired=stamp)
    try:
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise OutputBusy(Path(path), _owner_pid(lock_file)) from None
    except OSError as exc:
        raise CxrError(f"{display_path(path)}: cannot lock the output ({one_line(exc)})") from None
    try:
        yield owned
    finally:
        with contextlib.suppress(OSError):  # an empty lock file says "nobody", a stale pid would mislead
            os.ftruncate(held_fd[-1], 0)
        lock.release()


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _owner_pid(lock_file: Path) -> int | None:
    """The pid in a held lock file (the owner writes it right after locking, so wait a moment for it)."""
    deadline = time.monotonic() + PID_WAIT_S
    while True:
        try:
            fd = os.open(lock_file, os.O_RDONLY)
        except OSError:
            return None
        try:
            pid = _read_pid(fd)
        finally:
            os.close(fd)
        if pid is not None or time.monotonic() > deadline:
            return pid
        time.sleep(0.02)
