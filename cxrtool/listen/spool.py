"""The spool: received films on disk before they are acknowledged, and the work queue itself.

A film is written (temp file, fsync, rename) before the C-STORE response goes out, so nothing
acknowledged is lost if the process dies; a restart finds the files still here and processes them.
The spool's size is the queue's bound.  File names are a hash of the SOP Instance UID: no header
value appears in a name or a log line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

SUFFIX = ".dcm"


class Spool:
    """A folder of received, not yet processed films, oldest first."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.failed = self.folder.parent / "failed"

    @staticmethod
    def name_for(sop_instance_uid: str) -> str:
        return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:20] + SUFFIX

    def put(self, sop_instance_uid: str, data: bytes) -> Path:
        """Write one received film durably; return its spool path."""
        dst = self.folder / self.name_for(sop_instance_uid)
        tmp = self.folder / f".{dst.name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)
        return dst

    def pending(self) -> list[Path]:
        """Spooled films, oldest first (temp files of writes in progress are not listed)."""
        files = [p for p in self.folder.iterdir() if p.suffix == SUFFIX and not p.name.startswith(".")]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def __len__(self) -> int:
        return len(self.pending())

    def done(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def fail(self, path: Path) -> Path:
        """Keep a film that could not be processed in ``failed/`` (never silently dropped)."""
        self.failed.mkdir(parents=True, exist_ok=True)
        dst = self.failed / path.name
        shutil.move(str(path), dst)
        return dst
