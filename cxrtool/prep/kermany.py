"""Kermany et al. 2018 paediatric pneumonia films (Mendeley "ChestXRay2017", Kaggle "chest-xray-pneumonia").

Layout::

    chest_xray/train/NORMAL/IM-0115-0001.jpeg, NORMAL2-IM-0427-0001.jpeg ...
    chest_xray/train/PNEUMONIA/person1_bacteria_1.jpeg, person1_virus_6.jpeg ...
    chest_xray/val/...   (Kaggle only: 16 films)    chest_xray/test/...

Bacterial and viral pneumonia are told apart only by the file name (``_bacteria_`` /
``_virus_``); the patient is the name's ``personN`` (pneumonia) or ``IM-NNNN`` (normal) part.
The official train/test split is kept; the tiny official val stays val and ``val_fraction`` of
train is carved patient-wise on top.  All films are of children aged one to five.
"""

from __future__ import annotations

import re
from pathlib import Path

from cxrtool.inputs import iter_input_files
from cxrtool.prep.layouts import (
    ClassMap,
    Item,
    LayoutOptions,
    LayoutReport,
    Progress,
    build_manifest,
    find_root,
)

NAME = "kermany-pneumonia"
DEFAULT_MAP: dict[str, str | None] = {"normal": "normal", "virus": "viral_pneumonia", "bacteria": "bacterial_pneumonia"}
_PNEUMONIA = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+", re.IGNORECASE)
_SPLITS = {"train": "train", "val": "val", "test": "test"}


def _has_layout(d: Path) -> bool:
    return (
        (d / "train").is_dir()
        and (d / "test").is_dir()
        and any((d / "train" / c).is_dir() for c in ("NORMAL", "PNEUMONIA"))
    )


def parse_name(name: str, folder: str) -> tuple[str, str] | None:
    """``(dataset class, patient)`` from a file name in NORMAL/ or PNEUMONIA/; None if it fits neither pattern."""
    if folder.upper() == "PNEUMONIA":
        m = _PNEUMONIA.match(name)
        return (m.group(2).lower(), m.group(1).lower()) if m else None
    m = _NORMAL.match(name)
    return ("normal", m.group(1).upper()) if m else ("normal", "")


def list_items(root: Path, report: LayoutReport) -> list[Item]:
    items: list[Item] = []
    for split_dir in sorted(d for d in root.iterdir() if d.is_dir() and d.name.lower() in _SPLITS):
        for class_dir in sorted(
            d for d in split_dir.iterdir() if d.is_dir() and d.name.upper() in ("NORMAL", "PNEUMONIA")
        ):
            for p in iter_input_files([class_dir]):
                parsed = parse_name(p.name, class_dir.name)
                if parsed is None:
                    report.dropped["PNEUMONIA file named neither _bacteria_ nor _virus_"] += 1
                    continue
                raw, patient = parsed
                items.append(Item(p, raw, patient=patient, split=_SPLITS[split_dir.name.lower()]))
    return items


def prep_kermany(
    root: str | Path,
    out: str | Path,
    options: LayoutOptions = LayoutOptions(),
    *,
    salt: str | None,
    progress: Progress | None = None,
) -> LayoutReport:
    """``chest_xray/`` -> manifest: normal / viral_pneumonia / bacterial_pneumonia, official splits kept."""
    root = find_root(
        Path(root), _has_layout, "a chest_xray folder with train/ and test/ holding NORMAL/ and PNEUMONIA/"
    )
    report = LayoutReport(NAME, Path(out), root)
    class_map = ClassMap(DEFAULT_MAP, options.label_map, options.exclude)
    items = list_items(root, report)
    report.notes.append("patients from the file names (personN / IM-NNNN); paediatric films only")
    return build_manifest(items, Path(out), class_map, options, report, salt=salt, progress=progress)
