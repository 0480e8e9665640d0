"""Class-per-subfolder datasets (``ROOT/<class>/**/<image>``) -> cxrtool manifest.

The usual public COVID-19 collections come as one folder per class, without patient ids and
with the same film re-posted under several names. Splits are therefore made on *units*:
images linked by a patient id (optional ``groups`` CSV) or by a near-identical perceptual hash
are kept together, and units are split stratified by class (:mod:`cxrtool.prep.splits`).
"""

from __future__ import annotations

import csv
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.inputs import iter_input_files
from cxrtool.manifest import write_manifest
from cxrtool.prep.common import GroupNamer, manifest_path
from cxrtool.prep.options import FolderOptions
from cxrtool.prep.phash import (
    from_hex,
    group_pairs,
    near_duplicate_pairs,
    phash_file,
    to_hex,
)
from cxrtool.prep.splits import assign_splits, connected_units, crossing_groups
from cxrtool.workers import die_with

Progress = Callable[[int, int], None]


@dataclass
class DupGroup:
    """Near-duplicate images (paths relative to ROOT) and the largest Hamming distance linking them."""

    name: str
    members: list[str]
    labels: list[str]
    max_distance: int

    @property
    def cross_class(self) -> bool:
        return len(set(self.labels)) > 1


@dataclass
class FolderReport:
    """What ``prep folder`` did; ``ok`` is False when a file failed or a split leaked."""

    out: Path
    classes: list[str]
    images: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    outside_classes: int = 0
    dup_groups: list[DupGroup] = field(default_factory=list)
    patients_known: int = 0
    group_matches: int = 0
    group_ambiguous: list[str] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=dict)  # split -> class -> images
    leaking_groups: int = 0
    hash_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.leaking_groups


def _hash_one(path: Path) -> tuple[str, str]:
    """(hex hash, "") or ("", reason): one bad file must never stop the folder."""
    try:
        return to_hex(phash_file(path)), ""
    except ImageLoadError as exc:
        return "", exc.reason
    except Exception as exc:  # a decoder crash on one file is that file's failure
        return "", f"{type(exc).__name__}: {exc}"


def hash_files(paths: Sequence[Path], *, workers: int = 1, progress: Progress | None = None) -> list[tuple[str, str]]:
    """Perceptual hash (hex) or failure reason per path, in order; ``workers`` > 1 uses processes."""
    results: list[tuple[str, str]] = []
    if workers > 1 and len(paths) > 1:
        with ProcessPoolExecutor(
            max_workers=workers, initializer=die_with, initargs=(os.getpid(),)
        ) as pool:  # die with this run
            for res in pool.map(_hash_one, paths, chunksize=8):
                results.append(res)
                if progress:
                    progress(len(results), len(paths))
    else:
        for p in paths:
            results.append(_hash_one(p))
            if progress:
                progress(len(results), len(paths))
    return results


class PatientLookup:
    """Image path -> patient id from a CSV, matched on the longest common trailing path.

    The mapping file rarely uses the same root as ``prep folder`` (covid3's manifest says
    ``covid3_256/covid/x.png`` where ROOT gives ``covid/x.png``), so every trailing part of each
    listed path is indexed and an image takes the id of its longest matching suffix. A suffix
    shared by entries with different ids is ambiguous and gives no id.
    """

    AMBIGUOUS = object()

    def __init__(self, csv_path: Path, path_col: str, id_col: str):
        try:
            with open(csv_path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                cols = reader.fieldnames or []
                missing = [c for c in (path_col, id_col) if c not in cols]
                if missing:
                    raise CxrError(f"{csv_path}: no column {', '.join(missing)} (columns: {', '.join(cols)})")
                entries = [((r[path_col] or "").strip(), (r[id_col] or "").strip()) for r in reader]
        except OSError as exc:
            raise CxrError(f"{csv_path}: cannot read groups file ({exc.strerror or exc})") from None
        index: dict[str, set[str]] = {}
        for path, pid in entries:
            parts = PurePosixPath(path.replace("\\", "/")).parts
            for k in range(1, len(parts) + 1):
                index.setdefault("/".join(parts[-k:]), set()).add(pid)
        self._index = index

    def lookup(self, rel: str) -> str | object | None:
        """Patient id ("" = listed without id), ``AMBIGUOUS``, or None when not listed."""
        parts = PurePosixPath(rel).parts
        for k in range(len(parts), 0, -1):
            ids = self._index.get("/".join(parts[-k:]))
            if ids is not None:
                return next(iter(ids)) if len(ids) == 1 else self.AMBIGUOUS
        return None


def prep_folder(
    root: str | Path,
    out: str | Path,
    options: FolderOptions = FolderOptions(),
    *,
    salt: str | None = None,
    progress: Progress | None = None,
) -> FolderReport:
    """Hash, group and split every image under ``ROOT/<class>/``; write the manifest.

    Unreadable files are left out and listed in ``report.failed``; files directly in ROOT (no
    class) are counted in ``report.outside_classes``.
    """
    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise CxrError(f"{root}: not a folder")
    v, t = options.val_fraction, options.test_fraction
    if not (0 <= v < 1 and 0 <= t < 1 and v + t < 1):
        raise CxrError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    namer = GroupNamer(salt, keep_phi=options.keep_phi)
    lookup = PatientLookup(options.groups, options.groups_path_col, options.groups_id_col) if options.groups else None

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise CxrError(f"{root}: no class subfolders (expected ROOT/<class>/<images>)")
    report = FolderReport(out=out, classes=[d.name for d in class_dirs])
    report.outside_classes = sum(1 for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    paths: list[Path] = []
    labels: list[str] = []
    for d in class_dirs:
        for p in iter_input_files([d]):
            paths.append(p)
            labels.append(d.name)

    hashed = hash_files(paths, workers=options.workers, progress=progress)
    report.hash_seconds = time.perf_counter() - t0
    ok = [i for i, (h, _) in enumerate(hashed) if h]
    report.failed = [(str(paths[i]), why) for i, (h, why) in enumerate(hashed) if not h]
    paths = [paths[i] for i in ok]
    labels = [labels[i] for i in ok]
    hexes = [hashed[i][0] for i in ok]
    rels = [p.relative_to(root).as_posix() for p in paths]
    report.images = len(paths)

    dup_of: list[str] = [""] * len(paths)
    if options.dedup and paths:
        pairs = near_duplicate_pairs(np.stack([from_hex(h) for h in hexes]), options.dup_threshold)
        worst: Counter = Counter()
        for i, j, dist in pairs:
            worst[i] = max(worst[i], dist)
            worst[j] = max(worst[j], dist)
        for n, members in enumerate(group_pairs(len(paths), pairs), start=1):
            name = f"dup-{n:03d}"
            for i in members:
                dup_of[i] = name
            report.dup_groups.append(
                DupGroup(name, [rels[i] for i in members], [labels[i] for i in members], max(worst[i] for i in members))
            )

    patient: list[str] = [""] * len(paths)
    if lookup:
        for i, rel in enumerate(rels):
            pid = lookup.lookup(rel)
            if pid is PatientLookup.AMBIGUOUS:
                report.group_ambiguous.append(rel)
            elif pid is not None:
                report.group_matches += 1
                patient[i] = pid
        report.patients_known = len({p for p in patient if p})

    keys = [[f"patient:{p}"] * bool(p) + [f"dup:{d}"] * bool(d) for p, d in zip(patient, dup_of)]
    units = connected_units(keys)
    splits = assign_splits(
        [[lab] for lab in labels], units, {"train": 1 - v - t, "val": v, "test": t}, seed=options.seed
    )
    report.leaking_groups = len(crossing_groups(patient, splits)) + len(crossing_groups(dup_of, splits))

    groups = _unit_names(units, patient, namer)
    out_dir = out.parent.resolve()
    rows = [
        {
            "path": manifest_path(p, out_dir),
            "label": lab,
            "split": s,
            "group": g,
            "source": root.resolve().name,
            "dup_group": d,
            "phash": h,
        }
        for p, lab, s, g, d, h in zip(paths, labels, splits, groups, dup_of, hexes)
    ]
    for row in rows:
        report.counts.setdefault(row["split"], Counter())[row["label"]] += 1
    write_manifest(out, rows, ["dup_group", "phash"])
    report.total_seconds = time.perf_counter() - t0
    return report


def _unit_names(units: Sequence[int], patient: Sequence[str], namer: GroupNamer) -> list[str]:
    """``group`` per image = its split unit: the (pseudonymised) patient when the unit holds one
    known patient, ``unit-N`` when duplicates link several patients or only unknown ones, and ""
    for a lone image of unknown patient."""
    members: dict[int, list[int]] = {}
    for i, u in enumerate(units):
        members.setdefault(u, []).append(i)
    names: list[str] = [""] * len(units)
    n = 0
    for items in members.values():
        pids = {patient[i] for i in items} - {""}
        if len(pids) == 1:
            name = namer(pids.pop())
        elif len(items) > 1:
            n += 1
            name = f"unit-{n:03d}"
        else:
            continue
        for i in items:
            names[i] = name
    return names
