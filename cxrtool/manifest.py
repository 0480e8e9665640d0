"""Dataset manifests: one CSV format read and written by every command that handles data.

Columns (see README "Manifest format"):

``path``    image file, relative to the manifest's folder or absolute
``label``   multiclass: the class name; multilabel: findings joined by ``|`` ("" = none)
``split``   ``train`` / ``val`` / ``test`` (or empty)
``group``   patient / group id, pseudonymised; splits never share a group
``source``  where the row came from (dataset or tool name)
``y:<C>``   optional multi-hot columns (0/1), one per class in model order; their presence
            makes the manifest *multilabel* and fixes the class list, absent classes included.

Any other columns (``status``, ``error``, ``dup_group``...) are kept as they are.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cxrtool.errors import CxrError
from cxrtool.fsutil import NAME_ERRORS, atomic_open, open_names, safe_text
from cxrtool.task import Task, get_task

CORE_COLUMNS: tuple[str, ...] = ("path", "label", "split", "group", "source")
LABEL_PREFIX = "y:"


@dataclass
class Manifest:
    """Rows of a manifest plus the folder its relative paths are resolved against."""

    rows: list[dict[str, str]]
    root: Path
    columns: list[str] = field(default_factory=lambda: list(CORE_COLUMNS))

    @property
    def task(self) -> Task:
        """Multilabel when ``y:`` columns fix the class list, else multiclass (default threshold)."""
        return get_task("multilabel" if self.label_columns else "multiclass")

    @property
    def label_columns(self) -> list[str]:
        return [c for c in self.columns if c.startswith(LABEL_PREFIX)]

    @property
    def class_names(self) -> list[str]:
        """Multilabel: the ``y:`` columns in order; multiclass: sorted distinct labels."""
        if self.label_columns:
            return [c[len(LABEL_PREFIX) :] for c in self.label_columns]
        return sorted({r["label"] for r in self.rows if r.get("label")})

    def select(self, split: str | None) -> Manifest:
        """Rows of one split (``None`` keeps all)."""
        rows = self.rows if split is None else [r for r in self.rows if r.get("split") == split]
        return Manifest(rows=list(rows), root=self.root, columns=list(self.columns))

    def resolve(self, row: Mapping[str, str]) -> Path:
        p = Path(row["path"])
        return p if p.is_absolute() else self.root / p

    def multi_hot(self, row: Mapping[str, str]) -> list[float]:
        return [float(row.get(c) or 0) for c in self.label_columns]

    def class_index(self, row: Mapping[str, str], class_names: Sequence[str]) -> int:
        try:
            return list(class_names).index(row["label"])
        except ValueError:
            raise CxrError(f"{row['path']}: label {row['label']!r} is not one of {list(class_names)}") from None

    def counts(self, by: str = "label") -> Counter:
        return Counter(r.get(by, "") for r in self.rows)


def check_for_model(
    manifest: Manifest,
    split: str | None,
    class_names: Sequence[str],
    task: Task,
    *,
    source: str | Path,
    labelled: bool = True,
    min_classes: int = 1,
) -> Manifest:
    """The rows of ``split`` (None: all) checked against a model before any work: the one check
    ``calibrate`` and ``export --int8 --calib`` share.

    Refused with a one-line :class:`CxrError` naming ``source``: no rows in the split; a label that
    is not one of the model's classes (an unlabelled row too when ``labelled``); a multilabel
    manifest for a multiclass model or one lacking a ``y:`` column of the model; fewer than
    ``min_classes`` distinct labels present (one class cannot set a temperature: the fit runs to its
    bound); no row whose film is a readable file.  Single missing films are left to the reader,
    which skips and counts them.
    """
    where = f"split {split!r}" if split is not None else "the manifest"
    selected = manifest.select(split)
    if not selected.rows:
        raise CxrError(f"{source}: no rows with split {split!r}" if split is not None else f"{source}: no rows")
    names = list(class_names)
    if task.multilabel:
        missing = [c for c in names if label_column(c) not in manifest.columns]
        if missing:
            columns = ", ".join(label_column(c) for c in missing)
            raise CxrError(f"{source}: lacks the label columns {columns} of the model's classes {names}")
        try:
            present = {tuple(float(r.get(label_column(c)) or 0) for c in names) for r in selected.rows}
        except ValueError as exc:
            raise CxrError(f"{source}: a non-numeric y: value in {where} ({exc})") from None
    else:
        if manifest.label_columns:
            raise CxrError(f"{source}: has y: columns (multilabel) but the model is multiclass with classes {names}")
        foreign = sorted({r["label"] for r in selected.rows if r["label"] not in names and (labelled or r["label"])})
        if foreign:
            raise CxrError(f"{source}: label(s) {foreign[:5]} in {where} are not the model's classes {names}")
        present = {r["label"] for r in selected.rows if r["label"]}
    if len(present) < min_classes:
        raise CxrError(
            f"{source}: {len(present)} distinct label(s) in {where}; at least {min_classes} are needed "
            "(a single class cannot be calibrated)"
        )
    if not any(os.access(selected.resolve(r), os.R_OK) and selected.resolve(r).is_file() for r in selected.rows):
        first = safe_text(selected.rows[0]["path"])
        raise CxrError(f"{source}: none of the {len(selected.rows)} films of {where} is readable (first: {first})")
    return selected


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest CSV; fails with a one-line error if a core column is missing."""
    path = Path(path)
    try:
        with open_names(path) as fh:  # names not valid UTF-8 round-trip
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = [dict(r) for r in reader]
    except OSError as exc:
        raise CxrError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise CxrError(f"{path}: not a cxrtool manifest (missing columns: {', '.join(missing)})")
    for row in rows:
        for c in CORE_COLUMNS:
            row.setdefault(c, "")
            if row[c] is None:
                row[c] = ""
    columns = list(CORE_COLUMNS) + [c for c in columns if c not in CORE_COLUMNS]
    return Manifest(rows=rows, root=path.parent.resolve(), columns=columns)


def write_manifest(
    path: str | Path,
    rows: Iterable[Mapping[str, object]],
    extra_columns: Sequence[str] = (),
) -> Path:
    """Write rows atomically with the core columns first, then ``extra_columns`` in the given order."""
    path = Path(path)
    columns = list(CORE_COLUMNS) + [c for c in extra_columns if c not in CORE_COLUMNS]
    with atomic_open(path, "w", newline="", encoding="utf-8", errors=NAME_ERRORS) as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return path


def label_column(name: str) -> str:
    return f"{LABEL_PREFIX}{name}"
