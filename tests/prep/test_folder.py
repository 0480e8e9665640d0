"""Class-per-folder datasets: failures, near-duplicates, patient ids and leak-free splits."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cxrtool.errors import CxrError
from cxrtool.manifest import read_manifest
from cxrtool.prep.folder import FolderOptions, PatientLookup, hash_files, prep_folder


def _sides(rows, key):
    sides: dict[str, set[str]] = {}
    for r in rows:
        if r[key]:
            sides.setdefault(r[key], set()).add(r["split"])
    return sides


def test_synthetic_tree(class_tree: Path):
    out = class_tree / "manifest.csv"
    rep = prep_folder(class_tree, out, FolderOptions(val_fraction=0.2, test_fraction=0.2), salt="s")
    m = read_manifest(out)
    assert rep.classes == ["covid", "normal", "viral"]
    assert rep.failed and rep.failed[0][0].endswith("broken.png") and not rep.ok
    assert rep.outside_classes == 1 and rep.images == 39 == len(m.rows)
    # manifest next to the data: paths are relative to it and resolve
    assert m.rows[0]["path"].startswith("covid/") and all(m.resolve(r).is_file() for r in m.rows)
    # each class's JPEG copy is found with its original, and the pair stays on one side
    assert sorted(g.members for g in rep.dup_groups) == [
        [f"{c}/copy.jpg", f"{c}/img11.png"] for c in ("covid", "normal", "viral")
    ]
    assert all(len(s) == 1 for s in _sides(m.rows, "dup_group").values()) and rep.leaking_groups == 0
    assert {r["split"] for r in m.rows} == {"train", "val", "test"}
    for cls in rep.classes:
        assert rep.counts["test"][cls] >= 1


def test_no_dedup_and_bad_root(class_tree: Path, tmp_path: Path):
    rep = prep_folder(class_tree, tmp_path / "m.csv", FolderOptions(dedup=False), salt="s")
    assert rep.dup_groups == [] and all(not r["dup_group"] for r in read_manifest(tmp_path / "m.csv").rows)
    (tmp_path / "flat").mkdir()
    with pytest.raises(CxrError, match="no class subfolders"):
        prep_folder(tmp_path / "flat", tmp_path / "x.csv", salt="s")


def test_patient_lookup_longest_suffix(tmp_path: Path):
    p = tmp_path / "g.csv"
    p.write_text("file,patient_id\ndata/covid/a.png,P1\ndata/normal/a.png,\nb.png,P2\nx/c.png,P3\ny/c.png,P4\n")
    look = PatientLookup(p, "file", "patient_id")
    assert look.lookup("covid/a.png") == "P1"
    assert look.lookup("normal/a.png") == ""  # listed, id unknown: never borrows P1
    assert look.lookup("viral/b.png") == "P2"
    assert look.lookup("c.png") is PatientLookup.AMBIGUOUS
    assert look.lookup("zzz.png") is None
    with pytest.raises(CxrError, match="no column"):
        PatientLookup(p, "path", "patient_id")


def test_patients_kept_together(class_tree: Path, tmp_path: Path):
    groups = tmp_path / "g.csv"
    listed = [f"ds/{'covid' if i % 2 else 'normal'}/img{i:02d}.png" for i in range(6)]  # one patient, two classes
    with open(groups, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "patient_id"])
        w.writerows([p, "PAT-1"] for p in listed)
    for seed in range(3):  # a broken grouping would scatter six films in most seeds
        rep = prep_folder(class_tree, tmp_path / "m.csv", FolderOptions(groups=groups, seed=seed), salt="s")
        rows = read_manifest(tmp_path / "m.csv").rows
        pat = [r for r in rows if r["path"] in listed]
        assert len(pat) == 6 and len({r["split"] for r in pat}) == 1
    assert (
        len({r["group"] for r in pat}) == 1 and pat[0]["group"].startswith("anon-") and "PAT-1" not in pat[0]["group"]
    )
    assert rep.patients_known == 1 and rep.leaking_groups == 0


def test_covid3_256(shared_data: Path, tmp_path: Path):
    """The 11 known near-duplicate groups are found exactly and, with patient ids, nothing leaks."""
    known: dict[str, set[str]] = {}
    rows = list(csv.DictReader(open(shared_data / "covid3" / "manifest.csv", newline="")))
    for r in rows:
        if r["dup_group"]:
            known.setdefault(r["dup_group"], set()).add(r["file_256"].split("/", 1)[1])
    opts = FolderOptions(groups=shared_data / "covid3" / "manifest.csv", groups_path_col="file_256")
    rep = prep_folder(shared_data / "covid3_256", tmp_path / "m.csv", opts, salt="s")
    assert rep.ok and rep.images == 317
    assert sorted(map(sorted, known.values())) == sorted(sorted(g.members) for g in rep.dup_groups)
    assert not any(g.cross_class for g in rep.dup_groups)
    m = read_manifest(tmp_path / "m.csv")
    assert all(Path(r["path"]).is_absolute() for r in m.rows)  # manifest outside the data folder
    assert all(len(s) == 1 for s in _sides(m.rows, "group").values())
    assert all(len(s) == 1 for s in _sides(m.rows, "dup_group").values())
    for cls, n in {"covid": 137, "normal": 90, "viral_pneumonia": 90}.items():
        assert sum(rep.counts[s][cls] for s in rep.counts) == n
        assert abs(rep.counts["test"][cls] / n - 0.15) < 0.05


def test_parallel_hashing_matches_serial(class_tree: Path):
    paths = sorted((class_tree / "normal").iterdir())
    serial = hash_files(paths)
    assert hash_files(paths, workers=2) == serial
    assert [bool(h) for h, _ in serial].count(False) == 1  # broken.png, with a reason
    assert next(why for h, why in serial if not h)
