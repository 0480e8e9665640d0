"""Manifests built from the real fixture data: NIH thumbnails (multilabel) and covid3_256 (multiclass)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cxrtool.labels import CHESTXRAY14
from cxrtool.manifest import label_column, write_manifest

COVID_CLASSES = ("covid", "normal", "viral_pneumonia")


def nih_manifest(shared: Path, out: Path, *, per_split: dict[str, int]) -> Path:
    """Stage-1 manifest: N rows of each nih1000_64 folder split (half normal, half abnormal), 14 y: columns.

    The thumbnail folders' own train/valid/test split is not patient-disjoint; fine for plumbing tests.
    """
    folder_split = {"train": "train", "valid": "val", "test": "test"}
    taken: dict[tuple[str, str], int] = {}
    rows = []
    with open(shared / "nih" / "images_manifest.csv", newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            if not r["file"].startswith("nih1000_64/"):
                continue
            _, folder, kind, _ = r["file"].split("/")
            split = folder_split[folder]
            if taken.get((split, kind), 0) >= per_split.get(split, 0) // 2:
                continue
            taken[(split, kind)] = taken.get((split, kind), 0) + 1
            findings = [f for f in r["finding_labels"].split("|") if f != "No Finding"]
            row = {"path": str(shared / "nih" / r["file"]), "label": "|".join(findings), "split": split}
            row |= {"group": r["patient_id"], "source": "nih"}
            row |= {label_column(c): int(c in findings) for c in CHESTXRAY14}
            rows.append(row)
    return write_manifest(out, rows, [label_column(c) for c in CHESTXRAY14])


def covid_manifest(shared: Path, out: Path, *, train: int, val: int, test: int = 0) -> Path:
    """Stage-2 manifest: per class, the first ``train`` files (sorted) are train, then ``val``, then ``test``."""
    rows = []
    for cls in COVID_CLASSES:
        files = sorted((shared / "covid3_256" / cls).glob("*.png"))
        for i, f in enumerate(files[: train + val + test]):
            split = "train" if i < train else "val" if i < train + val else "test"
            rows.append({"path": str(f), "label": cls, "split": split, "group": f.stem, "source": "covid3_256"})
    return write_manifest(out, rows)


@pytest.fixture(scope="session")
def nih_small(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nih_manifest(shared_data, tmp_path_factory.mktemp("nih") / "nih.csv", per_split={"train": 48, "val": 24})


@pytest.fixture(scope="session")
def covid_small(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return covid_manifest(shared_data, tmp_path_factory.mktemp("covid") / "covid.csv", train=12, val=6, test=6)
