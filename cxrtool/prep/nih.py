"""NIH ChestX-ray14 (``Data_Entry_2017.csv`` / ``Data_Entry_2017_v2020.csv``) -> cxrtool manifest.

Two outputs:

* **multilabel** (default): the 14 findings in canonical order as ``y:<Finding>`` columns,
  ``label`` = findings joined by ``|`` ("" for No Finding) - the stage-1 task of the paper.
* **multiclass** with a label map (``viral_pneumonia=Pneumonia,normal=No Finding``): each image
  gets the one target it matches; images matching none or several targets are dropped and
  counted (or, with ``conflict="first"``, several-target images take the first target listed).

Splits: the official ``test_list.txt`` is the test split; a patient-wise, label-stratified
validation split is carved out of ``train_val_list.txt``. Without the official lists all three
splits are carved patient-wise. Patient ids become pseudonyms (NIH ids are already de-identified
serial numbers, and the file names embed them, but every cxrtool manifest follows the same
policy so no tool needs to special-case a source).

References
----------
Wang et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks", CVPR 2017.
"""

from __future__ import annotations

import csv
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from cxrtool.errors import CxrError
from cxrtool.labels import CHESTXRAY14, NO_FINDING
from cxrtool.manifest import label_column, write_manifest
from cxrtool.prep.common import GroupNamer, manifest_path
from cxrtool.prep.splits import assign_splits, connected_units, crossing_groups
from cxrtool.task import LABEL_SEPARATOR

SOURCE = "nih-chestxray14"
_ORDER = {f: i for i, f in enumerate(CHESTXRAY14)}
_REQUIRED = {
    "image index": "image",
    "finding labels": "labels",
    "follow-up #": "follow_up",
    "patient id": "patient",
    "view position": "view",
}


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace(" ", "")


_BY_NORM = {_norm(f): f for f in (*CHESTXRAY14, NO_FINDING)}


@dataclass(frozen=True, slots=True)
class NihRecord:
    """One row of Data_Entry: findings in canonical order, () for No Finding."""

    image: str
    findings: tuple[str, ...]
    follow_up: int
    patient: str
    view: str


def split_header(line: str) -> list[str]:
    """Column names of a Data_Entry header, bracketed groups expanded.

    The files write ``OriginalImage[Width,Height]`` unquoted, so a plain CSV split breaks it in
    two pieces - which is in fact right, because every data row has two values there. Pieces are
    re-joined and renamed ``OriginalImage[Width]``, ``OriginalImage[Height]`` so names stay
    unique; a trailing empty name (the 2017 file ends its header with a comma) is dropped.
    """
    pieces = next(csv.reader([line]))
    names: list[str] = []
    buf: list[str] = []
    for piece in pieces:
        buf.append(piece)
        joined = ",".join(buf)
        if joined.count("[") > joined.count("]"):
            continue
        buf = []
        if "[" in joined and joined.endswith("]"):
            stem, inner = joined[:-1].split("[", 1)
            names.extend(f"{stem.strip()}[{part.strip()}]" for part in inner.split(","))
        else:
            names.append(joined.strip())
    if buf:
        names.append(",".join(buf).strip())
    while names and not names[-1]:
        names.pop()
    return names


@lru_cache(maxsize=4096)
def parse_findings(text: str) -> tuple[str, ...]:
    """``"Effusion|Atelectasis"`` -> canonical-order tuple; ``"No Finding"`` -> ()."""
    parts = [p.strip() for p in text.split(LABEL_SEPARATOR) if p.strip()]
    if not parts:
        raise ValueError("empty Finding Labels")
    found: set[str] = set()
    for p in parts:
        canon = _BY_NORM.get(_norm(p))
        if canon is None:
            raise ValueError(f"unknown finding {p!r}")
        found.add(canon)
    if NO_FINDING in found:
        if len(found) > 1:
            raise ValueError("'No Finding' together with findings")
        return ()
    return tuple(sorted(found, key=_ORDER.__getitem__))


def read_data_entry(path: str | Path) -> tuple[list[NihRecord], list[tuple[int, str]]]:
    """Parse either Data_Entry variant; returns records and ``(line, reason)`` of rejected rows."""
    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise CxrError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        header = fh.readline()
        names = [_norm_col(n) for n in split_header(header.rstrip("\r\n"))] if header.strip() else []
        missing = [k for k in _REQUIRED if k not in names]
        if missing:
            raise CxrError(f"{path}: not a ChestX-ray14 Data_Entry file (missing columns: {', '.join(missing)})")
        idx = {_REQUIRED[k]: names.index(k) for k in _REQUIRED}
        width = len(names)
        records: list[NihRecord] = []
        bad: list[tuple[int, str]] = []
        for line_no, row in enumerate(csv.reader(fh), start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < width or any(v.strip() for v in row[width:]):
                bad.append((line_no, f"{len(row)} fields, header has {width}"))
                continue
            try:
                image = row[idx["image"]].strip()
                if not image:
                    raise ValueError("empty Image Index")
                patient = row[idx["patient"]].strip()
                records.append(
                    NihRecord(
                        image=image,
                        findings=parse_findings(row[idx["labels"]]),
                        follow_up=int(row[idx["follow_up"]]),
                        patient=str(int(patient)) if patient.isdigit() else patient,
                        view=row[idx["view"]].strip().upper(),
                    )
                )
            except ValueError as exc:
                bad.append((line_no, str(exc)))
    return records, bad


def _norm_col(name: str) -> str:
    return " ".join(name.lower().split())


@dataclass(frozen=True)
class LabelTarget:
    """A target class and the NIH findings that make it (any of them; ``No Finding`` = none)."""

    name: str
    findings: frozenset[str]
    no_finding: bool

    def matches(self, findings: tuple[str, ...]) -> bool:
        return (self.no_finding and not findings) or not self.findings.isdisjoint(findings)


def parse_label_map(text: str) -> list[LabelTarget]:
    """``"viral_pneumonia=Pneumonia,normal=No Finding"`` -> targets in the given order.

    ``|`` inside one target means any of (``abnormal=Mass|Nodule``); names are matched without
    regard to case, spaces or underscores.
    """
    targets: list[LabelTarget] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, sep, expr = item.partition("=")
        name = name.strip()
        if not sep or not name or not expr.strip():
            raise CxrError(f"--map: {item!r} is not TARGET=FINDING[|FINDING...]")
        if any(t.name == name for t in targets):
            raise CxrError(f"--map: target {name!r} given twice")
        found: set[str] = set()
        for p in (p.strip() for p in expr.split(LABEL_SEPARATOR)):
            canon = _BY_NORM.get(_norm(p))
            if canon is None:
                raise CxrError(f"--map: unknown finding {p!r} (known: {', '.join((*CHESTXRAY14, NO_FINDING))})")
            found.add(canon)
        targets.append(LabelTarget(name, frozenset(found - {NO_FINDING}), NO_FINDING in found))
    if not targets:
        raise CxrError("--map: no targets given")
    return targets


def index_images(dirs: Iterable[str | Path]) -> tuple[dict[str, Path], int]:
    """File name -> path for every file under ``dirs`` (recursive); the first one found wins.

    Returns the index and how many later files had a name already indexed (for the report).
    """
    index: dict[str, Path] = {}
    repeats = 0
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise CxrError(f"{d}: --images must be a folder")
        for root, subdirs, files in os.walk(d):
            subdirs.sort()
            for name in sorted(files):
                if name in index:
                    repeats += 1
                else:
                    index[name] = Path(root) / name
    return index, repeats


def read_split_list(path: Path) -> set[str]:
    try:
        return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    except OSError as exc:
        raise CxrError(f"{path}: cannot read split list ({exc.strerror or exc})") from None


@dataclass(frozen=True)
class NihOptions:
    """What ``prep nih`` keeps and how it labels and splits (all keyword options of the CLI)."""

    images: tuple[Path, ...] = ()
    drop_missing: bool = False
    train_val_list: Path | None = None
    test_list: Path | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0
    views: tuple[str, ...] = ()
    max_follow_up: int | None = None
    one_per_patient: bool = False
    label_map: str | None = None
    conflict: Literal["drop", "first"] = "drop"
    keep_phi: bool = False


@dataclass
class NihReport:
    """Everything the CLI shows after ``prep nih``; ``ok`` is False when inputs were bad or missing."""

    out: Path
    task: str
    class_names: list[str]
    rows_read: int = 0
    bad_rows: list[tuple[int, str]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)
    missing_kept: int = 0
    repeated_names: int = 0
    images_checked: bool = False
    official_split: bool = False
    rows_written: int = 0
    counts: dict[str, Counter] = field(default_factory=dict)  # split -> class -> images
    patients: Counter = field(default_factory=Counter)  # split -> patients
    patients_crossing: int = 0
    parse_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.bad_rows and not self.missing_kept and not self.patients_crossing


def prep_nih(
    csv_path: str | Path, out: str | Path, options: NihOptions = NihOptions(), *, salt: str | None = None
) -> NihReport:
    """Build and write the manifest for a Data_Entry file; returns the report.

    Order of steps: parse -> ``views`` -> ``max_follow_up`` -> image lookup (missing dropped
    with ``drop_missing``) -> label map -> ``one_per_patient`` (lowest follow-up left) -> splits.
    Every step's drops are counted in ``report.dropped``.
    """
    t0 = time.perf_counter()
    csv_path, out = Path(csv_path), Path(out)
    if (
        not 0 <= options.val_fraction < 1
        or not 0 <= options.test_fraction < 1
        or options.val_fraction + options.test_fraction >= 1
    ):
        raise CxrError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    targets = parse_label_map(options.label_map) if options.label_map else None
    lists = _split_lists(csv_path, options)
    namer = GroupNamer(salt, keep_phi=options.keep_phi)

    records, bad = read_data_entry(csv_path)
    report = NihReport(
        out=out,
        task="multiclass" if targets else "multilabel",
        class_names=[t.name for t in targets] if targets else list(CHESTXRAY14),
        rows_read=len(records) + len(bad),
        bad_rows=bad,
        parse_seconds=time.perf_counter() - t0,
    )

    def keep(recs: list[NihRecord], pred, reason: str) -> list[NihRecord]:
        kept = [r for r in recs if pred(r)]
        if len(kept) < len(recs):
            report.dropped[reason] += len(recs) - len(kept)
        return kept

    if options.views:
        views = {v.strip().upper() for v in options.views}
        records = keep(records, lambda r: r.view in views, f"view not in {','.join(sorted(views))}")
    if options.max_follow_up is not None:
        records = keep(
            records, lambda r: r.follow_up <= options.max_follow_up, f"follow-up # > {options.max_follow_up}"
        )

    found: dict[str, Path] = {}
    if options.images:
        report.images_checked = True
        found, report.repeated_names = index_images(options.images)
        missing = [r.image for r in records if r.image not in found]
        report.missing, report.missing_examples = len(missing), missing[:5]
        if options.drop_missing:
            records = keep(records, lambda r: r.image in found, "image not found under --images")
        else:
            report.missing_kept = len(missing)

    labels: dict[str, str] = {}
    if targets:
        kept: list[NihRecord] = []
        for r in records:
            hits = [t.name for t in targets if t.matches(r.findings)]
            if not hits:
                report.dropped["matches no --map target"] += 1
            elif len(hits) > 1 and options.conflict == "drop":
                report.dropped["matches several --map targets"] += 1
            else:
                labels[r.image] = hits[0]
                kept.append(r)
        records = kept
    if options.one_per_patient:
        first: dict[str, NihRecord] = {}
        for r in records:
            best = first.get(r.patient)
            if best is None or (r.follow_up, r.image) < (best.follow_up, best.image):
                first[r.patient] = r
        records = keep(records, lambda r: first[r.patient] is r, "not the first image of its patient")

    splits = _make_splits(records, labels, lists, options, report)
    keep_idx = [i for i, s in enumerate(splits) if s]
    records, splits = [records[i] for i in keep_idx], [splits[i] for i in keep_idx]
    report.patients_crossing = len(crossing_groups([r.patient for r in records], splits))

    out_dir = out.parent.resolve()
    y_columns = [label_column(f) for f in CHESTXRAY14]
    multi_hot = lru_cache(maxsize=None)(lambda fs: {c: int(f in fs) for c, f in zip(y_columns, CHESTXRAY14)})
    rows = []
    for r, split in zip(records, splits):
        finding_text = LABEL_SEPARATOR.join(r.findings)
        row = {
            "path": manifest_path(found[r.image], out_dir) if r.image in found else r.image,
            "label": labels[r.image] if targets else finding_text,
            "split": split,
            "group": namer(r.patient),
            "source": SOURCE,
            "view": r.view,
            "follow_up": r.follow_up,
        }
        if targets:
            row["findings"] = finding_text or NO_FINDING
        else:
            row.update(multi_hot(r.findings))
        if report.images_checked:
            row["status"] = "ok" if r.image in found else "missing"
        rows.append(row)
        report.counts.setdefault(split, Counter()).update([row["label"]] if targets else (r.findings or (NO_FINDING,)))
    report.patients = Counter(s for s, _ in {(s, r.patient) for r, s in zip(records, splits)})

    extra = ["view", "follow_up"] + (["findings"] if targets else y_columns)
    if report.images_checked:
        extra.append("status")
    write_manifest(out, rows, extra)
    report.rows_written = len(rows)
    report.total_seconds = time.perf_counter() - t0
    return report


def _split_lists(csv_path: Path, options: NihOptions) -> tuple[set[str], set[str]] | None:
    """Official (train_val, test) names: given paths, else the files next to the CSV, else None."""
    tv = options.train_val_list or csv_path.parent / "train_val_list.txt"
    te = options.test_list or csv_path.parent / "test_list.txt"
    given = options.train_val_list is not None or options.test_list is not None
    if not given and not tv.is_file() and not te.is_file():
        return None
    for p in (tv, te):
        if not p.is_file():
            raise CxrError(f"{p}: official split list not found (give both --train-val-list and --test-list)")
    return read_split_list(tv), read_split_list(te)


def _make_splits(
    records: Sequence[NihRecord],
    labels: dict[str, str],
    lists: tuple[set[str], set[str]] | None,
    options: NihOptions,
    report: NihReport,
) -> list[str]:
    """Split per record ("" = dropped): official test + patient-wise val carve, or all carved."""
    strata = [[labels[r.image]] if labels else list(r.findings or (NO_FINDING,)) for r in records]
    if lists is None:
        fractions = {
            "train": 1 - options.val_fraction - options.test_fraction,
            "val": options.val_fraction,
            "test": options.test_fraction,
        }
        units = connected_units([[r.patient] for r in records])
        return assign_splits(strata, units, fractions, seed=options.seed)

    report.official_split = True
    train_val, test = lists
    splits = ["test" if r.image in test else "trainval" if r.image in train_val else "" for r in records]
    outside = splits.count("")
    if outside:
        report.dropped["in neither official split list"] += outside
    tv_idx = [i for i, s in enumerate(splits) if s == "trainval"]
    units = connected_units([[records[i].patient] for i in tv_idx])
    carved = assign_splits(
        [strata[i] for i in tv_idx],
        units,
        {"train": 1 - options.val_fraction, "val": options.val_fraction},
        seed=options.seed,
    )
    for i, s in zip(tv_idx, carved):
        splits[i] = s
    return splits
