"""The CSV and JSONL prediction files: appended and fsync'd per batch, and read back for ``--resume``.

The output is streamed, not written atomically: a run that takes all day must keep its finished
rows after a crash, and ``--resume`` continues from them (:func:`drop_torn_tail` cuts the one
line a crash can leave half-written).  File names are written with
:data:`cxrtool.fsutil.NAME_ERRORS`, so a name that is not valid UTF-8 is kept byte for byte and
found again by ``--resume``.  Columns come from :class:`~cxrtool.infer.rows.RowFormat`.
"""

from __future__ import annotations

import abc
import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from cxrtool.errors import CxrError
from cxrtool.fsutil import NAME_ERRORS, display_path, open_names
from cxrtool.infer.rows import Prediction, RowFormat

#: reason given instead of a row whose text cannot be stored (a lone surrogate that no file name makes)
UNWRITABLE_NAME = "file name cannot be stored in the output"


class PredictionWriter(abc.ABC):
    """Appends rows and flushes them to disk after every batch."""

    def __init__(self, path: Path, fmt: RowFormat):
        self.path = path
        self.fmt = fmt
        self.fh: io.TextIOBase | None = None

    @abc.abstractmethod
    def recorded_paths(self) -> set[str]:
        """Paths already in the file; checks it was made by this model with these classes."""

    @abc.abstractmethod
    def _line(self, row: Prediction) -> str:
        """One row as text, newline included."""

    def _start(self) -> None:
        """Write whatever a new file begins with."""

    def open(self, *, append: bool) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not append or not self.path.exists() or self.path.stat().st_size == 0
        self.fh = open_names(self.path, "a" if append else "w")
        if fresh:
            self._start()

    def write(self, rows: list[Prediction]) -> None:
        """Append rows (not yet synced); a row whose text cannot be encoded becomes an error row."""
        assert self.fh is not None
        for row in rows:
            line = self._line(row)
            try:
                line.encode("utf-8", NAME_ERRORS)
            except UnicodeEncodeError:
                line = self._line(Prediction(display_path(row.path), error=UNWRITABLE_NAME))
            self.fh.write(line)

    def sync(self) -> None:
        assert self.fh is not None
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.sync()
            self.fh.close()
            self.fh = None

    def _check_model(self, found: str | None) -> None:
        want = self.fmt.meta["model_id"]
        if found and found != want:
            raise CxrError(
                f"{display_path(self.path)}: was written by model {found}, not {want}; "
                "use another --out (or --overwrite)"
            )

    def _read(self) -> io.TextIOBase:
        return open_names(self.path)


class CsvWriter(PredictionWriter):
    def recorded_paths(self) -> set[str]:
        seen: set[str] = set()
        with self._read() as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                return seen
            if list(reader.fieldnames) != self.fmt.columns():
                raise CxrError(
                    f"{display_path(self.path)}: its columns differ from this model's; "
                    "use another --out (or --overwrite)"
                )
            for row in reader:
                if row.get("error") is None:
                    raise CxrError(
                        f"{display_path(self.path)}: line {reader.line_num} has missing columns; not a predict output?"
                    )
                self._check_model(row.get("model_id"))
                seen.add(row["path"])
        return seen

    def _start(self) -> None:
        csv.writer(self.fh, lineterminator="\n").writerow(self.fmt.columns())

    def _line(self, row: Prediction) -> str:
        flat = self.fmt.flat(self.fmt.record(row))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([_csv_value(flat[c]) for c in self.fmt.columns()])
        return buf.getvalue()


class JsonlWriter(PredictionWriter):
    def recorded_paths(self) -> set[str]:
        seen: set[str] = set()
        with self._read() as fh:
            for number, line in enumerate(fh, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise CxrError(
                        f"{display_path(self.path)}: line {number} is not JSON; not a predict output?"
                    ) from None
                if list(row.get("probabilities") or self.fmt.class_names) != self.fmt.class_names:
                    raise CxrError(
                        f"{display_path(self.path)}: its classes differ from this model's; "
                        "use another --out (or --overwrite)"
                    )
                self._check_model(row.get("model_id"))
                seen.add(row["path"])
        return seen

    def _line(self, row: Prediction) -> str:
        return json.dumps(_rounded(self.fmt.record(row)), ensure_ascii=False) + "\n"


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6f}" if isinstance(value, float) else value


def _rounded(value: Any) -> Any:
    """Floats to 6 decimals, like the CSV (nested dicts included)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def drop_torn_tail(path: Path) -> None:
    """Cut a half-written last line (a crash in the middle of a write) before appending."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data_end = fh.seek(0, os.SEEK_END)
        pos = data_end
        while pos > 0:
            step = min(1 << 16, pos)
            fh.seek(pos - step)
            chunk = fh.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                fh.truncate(pos - step + nl + 1)
                return
            pos -= step
        fh.truncate(0)


WRITERS: dict[str, type[PredictionWriter]] = {".csv": CsvWriter, ".jsonl": JsonlWriter}


def writer_class(out: Path) -> type[PredictionWriter]:
    """The writer for ``out``'s suffix; a usage error for any other."""
    try:
        return WRITERS[out.suffix.lower()]
    except KeyError:
        raise CxrError(f"{display_path(out)}: output must end in {' or '.join(WRITERS)}") from None
