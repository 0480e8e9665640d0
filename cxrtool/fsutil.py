"""Atomic file writing (nothing is ever half-written: temp file in the same folder, then rename)
and file names as text (names that are not valid UTF-8 are kept, never a crash)."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Literal

_UMASK = os.umask(0)  # read once at import (os.umask can only read by setting)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(dst: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dst``; on success it is renamed onto ``dst``.

    The rename is atomic on POSIX, so readers see either the old file or the complete new one.
    The temp name keeps ``dst``'s suffix so libraries that pick a format by suffix still work, and
    carries the writer's pid (``.best.4242-k3j2h1g0.tmp.safetensors``) so a temp file orphaned by
    a kill is recognised and removed by :func:`remove_stale_temps` in the next run.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{_short(dst.stem, len(dst.suffix))}.{os.getpid()}-", suffix=f".tmp{dst.suffix}", dir=dst.parent
    )
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dst)
    finally:
        tmp_path.unlink(missing_ok=True)


def _short(stem: str, suffix_len: int) -> str:
    """``stem`` cut so the temp name stays within NAME_MAX (255 bytes) when the final name does."""
    room = 255 - suffix_len - len(".tmp") - len(f"..{os.getpid()}-xxxxxxxx")
    raw = os.fsencode(stem)
    return stem if len(raw) <= room else os.fsdecode(raw[: max(1, room)])


@contextlib.contextmanager
def atomic_open(dst: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing that replaces ``dst`` only when the block succeeds."""
    with atomic_path(dst) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(dst: str | Path, text: str) -> None:
    """UTF-8, with file names in ``text`` kept byte for byte (:data:`NAME_ERRORS`)."""
    with atomic_open(dst, "w", encoding="utf-8", errors=NAME_ERRORS) as fh:
        fh.write(text)


#: Kernel and virtual filesystems: writing a result there is always a mistake (and root's access() says yes).
_PSEUDO_FS = frozenset(
    {
        "proc",
        "sysfs",
        "devtmpfs",
        "devpts",
        "cgroup",
        "cgroup2",
        "debugfs",
        "tracefs",
        "securityfs",
        "configfs",
        "pstore",
        "bpf",
        "efivarfs",
        "binfmt_misc",
        "fusectl",
        "mqueue",
        "hugetlbfs",
        "autofs",
        "rpc_pipefs",
        "nsfs",
    }
)
_PSEUDO_ROOTS = (Path("/proc"), Path("/sys"))


def check_writable_output(path: str | Path, kind: Literal["file", "dir"] = "file") -> Path:
    """Refuse, before any input is read, an output that cannot be written; touches nothing.

    ``kind="file"``: ``path`` must not be a folder (or other non-regular file), an existing file must
    be writable, and its folder (or the nearest existing ancestor, for folders still to be created)
    must be a writable folder.  ``kind="dir"``: ``path`` must be a writable folder or creatable.
    Paths on kernel filesystems (``/proc``, ``/sys``, ``/dev``) and read-only mounts are refused
    even for root, whose ``access()`` succeeds there.  Returns ``path`` as a :class:`Path`.

    Raises
    ------
    CxrError
        One line naming ``path`` and the reason.
    """
    from cxrtool.errors import CxrError

    path = Path(path)

    def refuse(reason: str) -> CxrError:
        return CxrError(f"{path}: cannot write the output here ({reason})")

    target = Path(os.path.abspath(path))
    if os.path.lexists(target) and not target.exists():
        raise refuse("a broken symbolic link")
    if target.exists():
        target = target.resolve()
        if kind == "file" and target.is_dir():
            raise refuse("it is a folder; give a file name")
        if kind == "file" and not target.is_file():
            raise refuse("it exists and is not a regular file")
        if kind == "dir" and not target.is_dir():
            raise refuse("it exists and is not a folder")
        _check_place(target, refuse)
        if not os.access(target, os.W_OK | (os.X_OK if kind == "dir" else 0)):
            raise refuse("permission denied")
    folder = target if kind == "dir" and target.is_dir() else target.parent
    while not folder.exists():
        folder = folder.parent
    folder = folder.resolve()
    if not folder.is_dir():
        raise refuse(f"{folder} is not a folder")
    _check_place(folder, refuse)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise refuse(f"folder {folder} is not writable")
    return path


def _check_place(resolved: Path, refuse: Callable[[str], Exception]) -> None:
    """Kernel filesystems and read-only mounts, where permission bits do not tell the truth."""
    if any(resolved == root or root in resolved.parents for root in _PSEUDO_ROOTS):
        raise refuse(f"{resolved} is on a kernel filesystem")
    fstype = _fstype(resolved)
    if fstype in _PSEUDO_FS:
        raise refuse(f"{resolved} is on a {fstype} filesystem")
    try:
        if os.statvfs(resolved).f_flag & os.ST_RDONLY:
            raise refuse(f"{resolved} is on a read-only filesystem")
    except OSError:
        pass


def _fstype(resolved: Path) -> str | None:
    """Filesystem type of the mount holding ``resolved`` (Linux ``/proc/self/mountinfo``; None elsewhere)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    best, fstype = -1, None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]))  # spaces are written \040
        if (resolved == mount or mount in resolved.parents) and len(mount.parts) > best:
            best, fstype = len(mount.parts), right.split()[0]
    return fstype


# --- orphaned temp files ------------------------------------------------------------------------

_TEMP_NAME = re.compile(r"^\..+\.(?P<pid>\d+)-[A-Za-z0-9_]{8}\.tmp(\.[^.]*)?$")


def remove_stale_temps(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """Delete temp files of :func:`atomic_path` whose writing process is gone (killed mid-write).

    Only names in :func:`atomic_path`'s pattern are touched, and only when their pid is not a live
    process on this machine, so a concurrent writer's temp file is left alone.  Returns what was removed.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, _, names in walk:
        for name in names:
            match = _TEMP_NAME.match(name)
            if match and not _pid_alive(int(match["pid"])):
                path = Path(root) / name
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or an absurd pid): not ours to judge
    return True


# --- file names as text ------------------------------------------------------------------------

NAME_ERRORS = "surrogateescape"
"""``errors=`` for text files that hold file names (CSV/JSONL outputs and their readers).

Python decodes a name that is not valid UTF-8 (Latin-1 ``é`` from a Windows share) with lone
surrogates; writing with this handler puts the original bytes back, so the name in the file is
byte-for-byte the name on disk and reading it back with the same handler finds the file again.
"""


def open_names(path: str | Path, mode: str = "r") -> IO[str]:
    """Open one of cxrtool's own CSV/JSONL files (manifests, predictions, result indexes) as text.

    The one policy for files that hold file names, reading and writing alike: UTF-8 with
    :data:`NAME_ERRORS` and ``newline=""`` (the csv module's requirement), so a Latin-1 name written
    byte for byte is read back as the same name instead of a ``UnicodeDecodeError``.
    """
    return open(path, mode, encoding="utf-8", errors=NAME_ERRORS, newline="")


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8 for terminals and log lines: undecodable name bytes shown as ``\\xe9``.

    Lossy only for those bytes (a display form); use :data:`NAME_ERRORS` where the name must round-trip.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", NAME_ERRORS)
    except UnicodeEncodeError:  # a lone surrogate that did not come from a file name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def display_path(path: str | Path | bytes) -> str:
    """A path for messages and progress lines (see :func:`safe_text`)."""
    return safe_text(os.fsdecode(path))
