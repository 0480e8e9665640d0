"""What the public-dataset recipes share: class mapping, official splits kept, patient-wise carving.

Each recipe (:mod:`.radiography`, :mod:`.covidx`, :mod:`.kermany`) only knows its download's
layout: it lists :class:`Item` records (file, the dataset's own class name, patient id when the
dataset has one, the official split when it has one). :func:`build_manifest` then does the same
thing for all of them:

1. the dataset's class names become manifest labels through a :class:`ClassMap` (defaults per
   dataset, ``--map RAW=LABEL`` and ``--exclude RAW`` on top);
2. optionally every image is perceptually hashed (:mod:`.phash`): unreadable files are left out
   and named, near-duplicates are linked;
3. official ``test``/``val`` assignments are kept as they are; the official ``train`` part gives
   up a ``val_fraction`` carved by units (patient and near-duplicate links, never split); items
   without an official split are carved into all three;
4. patients (and near-duplicate groups) seen in more than one split are counted; an official
   split that leaks is reported, never silently repaired.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrtool.errors import CxrError
from cxrtool.manifest import write_manifest
from cxrtool.prep.common import GroupNamer, manifest_path
from cxrtool.prep.options import DEFAULT_THRESHOLD
from cxrtool.prep.phash import from_hex, group_pairs, near_duplicate_pairs
from cxrtool.prep.splits import assign_splits, connected_units, crossing_groups

Progress = Callable[[int, int], None]
SPLITS = ("train", "val", "test")


def norm_class(name: str) -> str:
    """Class names compare without case, spaces, underscores or hyphens (``Viral Pneumonia`` = ``viral_pneumonia``)."""
    return re.sub(r"[\s_\-]+", "", name).lower()


@dataclass(frozen=True)
class Item:
    """One image as a dataset's own layout describes it."""

    path: Path
    raw_class: str
    patient: str = ""  # "" = the dataset gives no patient id
    split: str = ""  # official split ("train" / "val" / "test"), "" = none
    source: str = ""  # sub-source named by the dataset (COVIDx's 4th column, say)


class ClassMap:
    """Dataset class name -> manifest label, or ``None`` for excluded classes.

    ``defaults`` maps every class the dataset documents (``None`` = excluded unless asked);
    ``overrides`` (``"Lung_Opacity=lung_opacity,COVID=covid19"``) and ``exclude`` apply on top.
    """

    def __init__(self, defaults: Mapping[str, str | None], overrides: str | None = None, exclude: Iterable[str] = ()):
        self._map = {norm_class(k): v for k, v in defaults.items()}
        self._known = {norm_class(k): k for k in defaults}
        for item in (t.strip() for t in (overrides or "").split(",")):
            if not item:
                continue
            raw, sep, label = item.partition("=")
            if not sep or not raw.strip() or not label.strip():
                raise CxrError(f"--map: {item!r} is not DATASET_CLASS=LABEL")
            self._check(raw)
            self._map[norm_class(raw)] = label.strip()
        for raw in exclude:
            self._check(raw)
            self._map[norm_class(raw)] = None

    def _check(self, raw: str) -> None:
        if norm_class(raw) not in self._known:
            raise CxrError(
                f"unknown dataset class {raw.strip()!r} (this dataset has: {', '.join(self._known.values())})"
            )

    def __call__(self, raw: str) -> str | None:
        return self._map.get(norm_class(raw))

    def known(self, raw: str) -> bool:
        return norm_class(raw) in self._known


@dataclass(frozen=True)
class LayoutOptions:
    """Options every recipe shares (the CLI's ``--map``, ``--exclude``, fractions, hashing, PHI)."""

    label_map: str | None = None
    exclude: tuple[str, ...] = ()
    val_fraction: float = 0.1
    test_fraction: float = 0.15  # only for items without an official split
    seed: int = 0
    dedup: bool = True
    dup_threshold: int = DEFAULT_THRESHOLD
    keep_phi: bool = False
    workers: int = 1

    def __post_init__(self) -> None:
        v, t = self.val_fraction, self.test_fraction
        if not (0 <= v < 1 and 0 <= t < 1 and v + t < 1):
            raise CxrError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")


@dataclass
class LayoutReport:
    """What a recipe did; ``ok`` is False when files failed, were missing, or an official split leaks."""

    dataset: str
    out: Path
    root: Path
    classes: list[str] = field(default_factory=list)
    images: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> images
    failed: list[tuple[str, str]] = field(default_factory=list)  # unreadable (path, reason)
    missing: list[str] = field(default_factory=list)  # listed by the dataset, not on disk
    ignored: Counter = field(default_factory=Counter)  # what the layout documents but cxrtool skips (masks...)
    official_splits: list[str] = field(default_factory=list)
    dup_groups: int = 0
    patients: int = 0
    patients_crossing: int = 0  # patients in 2+ splits (an official split's leak included)
    dups_crossing: int = 0  # near-duplicate groups in 2+ splits (only official splits can cause it)
    counts: dict[str, Counter] = field(default_factory=dict)  # split -> label -> images
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.missing and not self.patients_crossing and not self.dups_crossing


def _hash_all(paths: Sequence[Path], options: LayoutOptions, progress: Progress | None) -> list[tuple[str, str]]:
    from cxrtool.prep.folder import hash_files

    return hash_files(paths, workers=options.workers, progress=progress)


def build_manifest(
    items: Sequence[Item],
    out: Path,
    class_map: ClassMap,
    options: LayoutOptions,
    report: LayoutReport,
    *,
    salt: str | None,
    progress: Progress | None = None,
) -> LayoutReport:
    """Map, hash, split and write ``items`` (see the module docstring); fills and returns ``report``."""
    t0 = time.perf_counter()
    namer = GroupNamer(salt, keep_phi=options.keep_phi)
    kept: list[tuple[Item, str]] = []
    for it in items:
        label = class_map(it.raw_class)
        if label is None:
            report.dropped[
                f"class {it.raw_class!r} excluded"
                if class_map.known(it.raw_class)
                else f"class {it.raw_class!r} unknown"
            ] += 1
        else:
            kept.append((it, label))
    if not kept:
        raise CxrError(
            f"{report.root}: no images left after class mapping ({dict(report.dropped) or 'no images found'})"
        )

    dup_of = [""] * len(kept)
    if options.dedup:
        hashed = _hash_all([it.path for it, _ in kept], options, progress)
        good = [i for i, (h, _) in enumerate(hashed) if h]
        report.failed = [(str(kept[i][0].path), why) for i, (h, why) in enumerate(hashed) if not h]
        kept = [kept[i] for i in good]
        hexes = [hashed[i][0] for i in good]
        dup_of = [""] * len(kept)
        if kept:
            pairs = near_duplicate_pairs(np.stack([from_hex(h) for h in hexes]), options.dup_threshold)
            for n, members in enumerate(group_pairs(len(kept), pairs), start=1):
                for i in members:
                    dup_of[i] = f"dup-{n:04d}"
            report.dup_groups = len({d for d in dup_of if d})
    report.images = len(kept)
    report.official_splits = sorted({it.split for it, _ in kept if it.split}, key=SPLITS.index)

    splits = _splits([it for it, _ in kept], [lab for _, lab in kept], dup_of, options)
    patients = [it.patient for it, _ in kept]
    report.patients = len({p for p in patients if p})
    report.patients_crossing = len(crossing_groups(patients, splits))
    report.dups_crossing = len(crossing_groups(dup_of, splits))

    out_dir = out.parent.resolve()
    rows = []
    for (it, label), split, dup in zip(kept, splits, dup_of):
        rows.append(
            {
                "path": manifest_path(it.path, out_dir),
                "label": label,
                "split": split,
                "group": namer(it.patient) if it.patient else dup,
                "source": f"{report.dataset}/{it.source}" if it.source else report.dataset,
                "dataset_class": it.raw_class,
                "official_split": it.split,
                "dup_group": dup,
            }
        )
        report.counts.setdefault(split, Counter())[label] += 1
    report.classes = sorted({lab for _, lab in kept})
    write_manifest(out, rows, ["dataset_class", "official_split", "dup_group"])
    report.seconds = time.perf_counter() - t0
    return report


def _splits(items: Sequence[Item], labels: Sequence[str], dup_of: Sequence[str], options: LayoutOptions) -> list[str]:
    """Official test/val kept; official train loses ``val_fraction`` by units; the rest carved in three."""
    result = [it.split if it.split in ("val", "test") else "" for it in items]
    for pool, fractions in (
        ("train", {"train": 1 - options.val_fraction, "val": options.val_fraction}),
        (
            "",
            {
                "train": 1 - options.val_fraction - options.test_fraction,
                "val": options.val_fraction,
                "test": options.test_fraction,
            },
        ),
    ):
        idx = [i for i, it in enumerate(items) if it.split == pool]
        if not idx:
            continue
        keys = [
            [f"patient:{items[i].patient}"] * bool(items[i].patient) + [f"dup:{dup_of[i]}"] * bool(dup_of[i])
            for i in idx
        ]
        carved = assign_splits([[labels[i]] for i in idx], connected_units(keys), fractions, seed=options.seed)
        for i, s in zip(idx, carved):
            result[i] = s
    return result


def find_root(root: Path, looks_right: Callable[[Path], bool], what: str) -> Path:
    """``root`` itself or the one folder below it (two levels at most) that has the expected layout.

    Downloads unpack with an extra level (``COVID-19_Radiography_Dataset/``, Kaggle's doubled
    ``chest_xray/chest_xray/``); pointing at the archive's folder or at its parent both work.
    """
    if not root.is_dir():
        raise CxrError(f"{root}: not a folder")
    level = [root]
    for _ in range(3):
        hits = [d for d in level if looks_right(d)]
        if hits:
            return hits[0]
        level = [
            c for d in level for c in sorted(d.iterdir()) if c.is_dir() and not c.name.startswith((".", "__MACOSX"))
        ]
    raise CxrError(f"{root}: {what} not found here or in the folders below it")
