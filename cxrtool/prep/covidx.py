"""COVIDx CXR (Wang, Lin & Wong 2020, COVID-Net; Kaggle "andyczhao/covidx-cxr2").

A download is image folders plus split files, one line per image::

    patient_id filename class source
    419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png positive rsna

``class`` is ``normal`` / ``pneumonia`` / ``COVID-19`` in the "A" files (COVIDx8A, CXR-3A) and
``positive`` / ``negative`` in the "B" files (COVIDx8B, CXR-2, CXR-3B, CXR-4).  Split files are
``train.txt`` / ``val.txt`` / ``test.txt`` (CXR-2 and later) or ``train_COVIDx…txt`` /
``test_COVIDx…txt``; images lie in ``train/``, ``val/``, ``test/`` beside them (looked up by name
anywhere under the root otherwise).  The splits are patient-wise by construction, which is
checked, and a patient-wise val is carved out of train when no val file exists.

Parsing: the first field is the patient, the last two are class and source, and whatever lies
between is the file name (a few early names hold spaces).  Old three-field lines (no source)
are read too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from cxrtool.errors import CxrError
from cxrtool.prep.layouts import ClassMap, Item, LayoutOptions, LayoutReport, Progress, build_manifest, norm_class

NAME = "covidx-cxr"
DEFAULT_MAP: dict[str, str | None] = {
    "COVID-19": "covid",
    "normal": "normal",
    "pneumonia": "pneumonia",  # non-COVID pneumonia of any cause, mostly RSNA: not "viral"
    "positive": "covid",
    "negative": "negative",
}
_CLASSES = {norm_class(k) for k in DEFAULT_MAP}


def parse_line(line: str) -> tuple[str, str, str, str]:
    """``(patient, filename, class, source)`` of one split-file line; ValueError when it is not one."""
    parts = line.split()
    if len(parts) >= 4 and norm_class(parts[-2]) in _CLASSES:
        return parts[0], " ".join(parts[1:-2]), parts[-2], parts[-1]
    if len(parts) >= 3 and norm_class(parts[-1]) in _CLASSES:
        return parts[0], " ".join(parts[1:-1]), parts[-1], ""
    raise ValueError(f"expected 'patient_id filename class source', got {len(parts)} fields")


def find_split_files(root: Path) -> dict[str, Path]:
    """``{"train": …, "val": …, "test": …}`` from the ``*.txt`` files in ``root`` (one per split)."""
    found: dict[str, list[Path]] = {}
    for p in sorted(root.glob("*.txt")):
        for split in ("train", "val", "test"):
            if p.name.lower().startswith(split):
                found.setdefault(split, []).append(p)
    for split, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise CxrError(f"{root}: several {split} files ({names}); choose one with --{split}-file")
    return {s: ps[0] for s, ps in found.items()}


def list_items(root: Path, files: dict[str, Path], report: LayoutReport) -> list[Item]:
    from cxrtool.prep.nih import index_images

    index: dict[str, Path] | None = None
    items: list[Item] = []
    bad: list[str] = []
    for split, list_file in files.items():
        try:
            lines = list_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CxrError(f"{list_file}: cannot read ({exc.strerror or exc})") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                patient, name, cls, source = parse_line(line)
            except ValueError as exc:
                bad.append(f"{list_file.name} line {number}: {exc}")
                continue
            path = root / split / name
            if not path.is_file():
                if index is None:
                    index, _ = index_images([root])
                path = index.get(Path(name).name, path)
            if not path.is_file():
                report.missing.append(f"{list_file.name}: {name}")
                continue
            items.append(Item(path, cls, patient=patient, split=split, source=source))
    if bad:
        raise CxrError(f"{len(bad)} malformed split-file lines, first: {bad[0]}")
    return items


def prep_covidx(
    root: str | Path,
    out: str | Path,
    options: LayoutOptions = LayoutOptions(),
    *,
    split_files: dict[str, Path] | None = None,
    salt: str | None,
    progress: Progress | None = None,
) -> LayoutReport:
    """COVIDx folder + split files -> manifest; missing listed images are named in ``report.missing``."""
    root = Path(root)
    if not root.is_dir():
        raise CxrError(f"{root}: not a folder")
    files = {**find_split_files(root), **(split_files or {})}
    if "train" not in files and "test" not in files:
        raise CxrError(f"{root}: no COVIDx split files (train*.txt / test*.txt); give --train-file / --test-file")
    if "val" in files:  # the dataset's own val split: nothing is carved out of train
        options = dataclasses.replace(options, val_fraction=0.0)
    report = LayoutReport(NAME, Path(out), root)
    report.notes.append("split files: " + ", ".join(f"{s} {p.name}" for s, p in files.items()))
    class_map = ClassMap(DEFAULT_MAP, options.label_map, options.exclude)
    items = list_items(root, files, report)
    return build_manifest(items, Path(out), class_map, options, report, salt=salt, progress=progress)
