"""The spool: received films on disk before they are acknowledged, and the work queue itself.

A film is written (temp file, fsync, rename, directory fsync) before the C-STORE response goes out,
so nothing acknowledged is lost if the process dies; a restart finds the files still here and
processes them.  The spool's size is the queue's bound.

A file is named ``<uid key>.<content key>.dcm``: a hash of the SOP Instance UID and a hash of the
received bytes.  So the same content sent twice lands on one file (analysed once), new content under
the same UID is a second file (analysed again), and removing a processed film can never remove a
different copy that arrived meanwhile.  No header value appears in a name or a log line.

Films that can never be analysed go to ``failed/`` with ``<name>.reason.txt`` beside them;
:meth:`Spool.retry_failed` puts them back (``cxrtool listen --retry-failed``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
from pathlib import Path

from cxrtool.fsutil import atomic_path, atomic_write_text, remove_stale_temps
from cxrtool.workers import pid_alive

SUFFIX = ".dcm"
REASON_SUFFIX = ".reason.txt"
#: the temp names the spool used before it wrote through ``atomic_path`` (``.NAME.dcm.PID.tmp``)
_OLD_TEMP = re.compile(r"^\.[0-9a-f]+\.dcm\.(?P<pid>\d+)\.tmp$")


def uid_key(sop_instance_uid: str) -> str:
    """The SOP Instance UID as a short hash (what names and log lines show instead of the UID)."""
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:20]


def content_key(data: bytes) -> str:
    """The received bytes (file meta + data set as sent) as a short hash."""
    return hashlib.sha256(data).hexdigest()[:16]


class Spool:
    """A folder of received, not yet processed films, oldest first."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.failed = self.folder.parent / "failed"

    @staticmethod
    def name_for(sop_instance_uid: str, data: bytes) -> str:
        return f"{uid_key(sop_instance_uid)}.{content_key(data)}{SUFFIX}"

    @staticmethod
    def same_instance(a: Path, b: Path) -> bool:
        """Whether two spool names are the same SOP Instance UID (whatever their content)."""
        return a.name.split(".", 1)[0] == b.name.split(".", 1)[0]

    def put(self, sop_instance_uid: str, data: bytes) -> Path:
        """Write one received film durably; return its spool path."""
        dst = self.folder / self.name_for(sop_instance_uid, data)
        with atomic_path(dst) as tmp, open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(self.folder)  # the rename itself survives a crash
        return dst

    def pending(self) -> list[Path]:
        """Spooled films, oldest first (temp files of writes in progress are not listed)."""
        found = []
        for p in self.folder.iterdir():
            if p.suffix == SUFFIX and not p.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):  # processed between the listing and the stat
                    found.append((p.stat().st_mtime_ns, p.name, p))
        return [p for *_, p in sorted(found)]

    def __len__(self) -> int:
        return len(self.pending())

    def done(self, path: Path) -> None:
        """Remove a processed film (its name holds its content hash: a different copy has another name)."""
        path.unlink(missing_ok=True)

    def fail(self, path: Path, reason: str) -> Path:
        """Keep a film that can never be analysed in ``failed/``, with its reason (no header values) beside it."""
        self.failed.mkdir(parents=True, exist_ok=True)
        dst = self.failed / path.name
        atomic_write_text(self.failed / f"{path.name}{REASON_SUFFIX}", reason + "\n")
        shutil.move(str(path), dst)
        return dst

    def remove_stale(self) -> list[Path]:
        """Delete temp files left by a run that died mid-write (their pid is gone): at start."""
        removed = remove_stale_temps(self.folder)
        for path in self.folder.iterdir():
            match = _OLD_TEMP.match(path.name)
            if match and not pid_alive(int(match["pid"])):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    def retry_failed(self) -> int:
        """Move every film in ``failed/`` back into the spool (and drop its reason); how many."""
        if not self.failed.is_dir():
            return 0
        moved = 0
        for film in sorted(self.failed.glob(f"*{SUFFIX}")):
            os.replace(film, self.folder / film.name)
            (self.failed / f"{film.name}{REASON_SUFFIX}").unlink(missing_ok=True)
            moved += 1
        _fsync_dir(self.folder)
        return moved


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
