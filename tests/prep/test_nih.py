"""ChestX-ray14 parsing, relabelling, missing images and splits (synthetic files + the real CSV)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from nih_synth import V2017_HEADER, V2020_HEADER, nih_row

from cxrtool.errors import CxrError
from cxrtool.labels import CHESTXRAY14
from cxrtool.manifest import read_manifest
from cxrtool.prep.nih import (
    NihOptions,
    parse_findings,
    parse_label_map,
    prep_nih,
    read_data_entry,
    split_header,
)


class TestParsing:
    def test_headers_of_both_variants(self):
        for header in (V2020_HEADER, V2017_HEADER):
            names = split_header(header)
            assert len(names) == 11
            assert names[7:9] == ["OriginalImage[Width]", "OriginalImage[Height]"]

    def test_findings_canonical_order_and_no_finding(self):
        assert parse_findings("Effusion|Atelectasis") == ("Atelectasis", "Effusion")
        assert parse_findings("No Finding") == ()
        with pytest.raises(ValueError):
            parse_findings("Covid")
        with pytest.raises(ValueError):
            parse_findings("No Finding|Mass")

    def test_2017_variant_trailing_comma_and_bad_rows(self, tmp_path: Path):
        p = tmp_path / "d.csv"
        lines = [
            V2017_HEADER,
            nih_row("a.png", "Mass", 0, 1, age="058Y") + ",",
            nih_row("b.png", "Bogus", 0, 2),
            "c.png,Mass,0",
        ]
        p.write_text("\n".join(lines) + "\n")
        records, bad = read_data_entry(p)
        assert [r.image for r in records] == ["a.png"] and records[0].findings == ("Mass",)
        assert [line for line, _ in bad] == [3, 4]
        assert "Bogus" in bad[0][1]

    def test_not_a_data_entry_file(self, tmp_path: Path):
        p = tmp_path / "x.csv"
        p.write_text("a,b\n1,2\n")
        with pytest.raises(CxrError, match="missing columns"):
            read_data_entry(p)

    def test_label_map(self):
        t = parse_label_map("viral_pneumonia=Pneumonia, normal=no finding, abnormal=Mass|pleural thickening")
        assert [x.name for x in t] == ["viral_pneumonia", "normal", "abnormal"]
        assert t[1].no_finding and t[2].findings == {"Mass", "Pleural_Thickening"}
        assert t[0].matches(("Infiltration", "Pneumonia")) and not t[0].matches(())
        for bad in ("x=Covid", "x", "a=Mass,a=Nodule"):
            with pytest.raises(CxrError):
                parse_label_map(bad)


class TestPrepNih:
    def test_multilabel_with_missing_kept(self, small_nih: Path, tmp_path: Path):
        out = tmp_path / "out" / "m.csv"
        rep = prep_nih(
            small_nih / "Data_Entry.csv", out, NihOptions(images=(small_nih / "imgs",), val_fraction=0.25), salt="s"
        )
        m = read_manifest(out)
        assert m.task.name == "multilabel" and m.class_names == list(CHESTXRAY14)
        assert rep.missing == rep.missing_kept == 2 and not rep.ok
        statuses = {r["path"]: r["status"] for r in m.rows}
        assert statuses["00000001_000.png"] == "missing"
        ok_row = next(r for r in m.rows if r["status"] == "ok")
        assert m.resolve(ok_row).is_file()
        row = next(r for r in m.rows if r["path"].endswith("00000001_002.png"))
        assert row["label"] == "Atelectasis|Effusion" and row["y:Atelectasis"] == "1" and row["y:Mass"] == "0"
        assert {r["split"] for r in m.rows} == {"train", "val", "test"}
        assert all(r["split"] == "test" for r in m.rows if Path(r["path"]).name.startswith(("00000007", "00000008")))
        assert rep.patients_crossing == 0
        groups = {}
        for r in m.rows:
            groups.setdefault(r["group"], set()).add(r["split"])
        assert all(len(s) == 1 for s in groups.values()) and len(groups) == 8
        assert all(g.startswith("anon-") for g in groups)

    def test_drop_missing_views_and_one_per_patient(self, small_nih: Path, tmp_path: Path):
        opts = NihOptions(
            images=(small_nih / "imgs",), drop_missing=True, views=("pa",), one_per_patient=True, keep_phi=True
        )
        rep = prep_nih(small_nih / "Data_Entry.csv", tmp_path / "m.csv", opts)
        m = read_manifest(tmp_path / "m.csv")
        assert rep.ok and rep.dropped["image not found under --images"] == 2
        assert all(r["view"] == "PA" for r in m.rows)
        assert len({r["group"] for r in m.rows}) == len(m.rows) <= 8
        assert {r["group"] for r in m.rows} <= {str(i) for i in range(1, 9)}  # --keep-phi: raw ids
        # patient 1 lost its first two images (missing): its remaining lowest follow-up is kept
        assert [r["follow_up"] for r in m.rows if r["group"] == "1"] == ["2"]

    def test_map_drops_unmatched_and_ambiguous(self, small_nih: Path, tmp_path: Path):
        opts = NihOptions(label_map="pneumonia=Pneumonia,effusion=Effusion,normal=No Finding")
        rep = prep_nih(small_nih / "Data_Entry.csv", tmp_path / "m.csv", opts, salt="s")
        m = read_manifest(tmp_path / "m.csv")
        assert m.task.name == "multiclass" and not m.label_columns
        assert rep.dropped["matches several --map targets"] == 4  # the Pneumonia|Effusion rows
        assert all(r["findings"] != "Effusion|Pneumonia" for r in m.rows)
        first = prep_nih(
            small_nih / "Data_Entry.csv",
            tmp_path / "f.csv",
            NihOptions(label_map=opts.label_map, conflict="first"),
            salt="s",
        )
        assert first.rows_written == rep.rows_written + 4
        labels = {r["findings"]: r["label"] for r in read_manifest(tmp_path / "f.csv").rows}
        assert labels["Effusion|Pneumonia"] == "pneumonia"

    def test_without_official_lists_all_splits_are_carved(self, small_nih: Path, tmp_path: Path):
        csv_only = tmp_path / "alone" / "d.csv"
        csv_only.parent.mkdir()
        csv_only.write_text((small_nih / "Data_Entry.csv").read_text())
        rep = prep_nih(csv_only, tmp_path / "m.csv", NihOptions(val_fraction=0.25, test_fraction=0.25), salt="s")
        assert not rep.official_split and rep.patients_crossing == 0
        assert {r["split"] for r in read_manifest(tmp_path / "m.csv").rows} == {"train", "val", "test"}

    def test_only_one_list_is_an_error(self, small_nih: Path, tmp_path: Path):
        with pytest.raises(CxrError, match="official split list"):
            prep_nih(
                small_nih / "Data_Entry.csv", tmp_path / "m.csv", NihOptions(test_list=tmp_path / "nope.txt"), salt="s"
            )


class TestRealData:
    def test_full_data_entry(self, shared_data: Path):
        records, bad = read_data_entry(shared_data / "nih" / "Data_Entry_2017_v2020.csv")
        assert len(records) == 112_120 and not bad
        assert len({r.patient for r in records}) == 30_805
        assert sum(1 for r in records if not r.findings) == 60_361  # No Finding, as published
        assert {f for r in records for f in r.findings} == set(CHESTXRAY14)

    def test_nih1000_stage1_manifest(self, shared_data: Path, tmp_path: Path):
        nih = shared_data / "nih"
        out = tmp_path / "nih1000.csv"
        rep = prep_nih(
            nih / "Data_Entry_2017_v2020.csv",
            out,
            NihOptions(images=(nih / "nih1000_64",), drop_missing=True),
            salt="s",
        )
        m = read_manifest(out)
        assert rep.ok and rep.rows_written == 1000 and rep.patients_crossing == 0
        assert m.task.name == "multilabel" and len(m.class_names) == 14
        assert all(m.resolve(r).is_file() for r in m.rows)
        test_names = set((nih / "test_list.txt").read_text().split())
        expected = list(csv.DictReader(open(nih / "images_manifest.csv", newline="")))
        official_test = sum(
            1 for r in expected if r["file"].startswith("nih1000_64/") and r["official_split"] == "test"
        )
        assert sum(1 for r in m.rows if r["split"] == "test") == official_test == 310
        assert all((r["split"] == "test") == (Path(r["path"]).name in test_names) for r in m.rows)
        assert 40 <= sum(1 for r in m.rows if r["split"] == "val") <= 100
        # labels agree with the independent per-image manifest of the fixture data
        truth = {Path(r["file"]).name: r["finding_labels"] for r in expected}
        for r in m.rows:
            assert set((r["label"] or "No Finding").split("|")) == set(truth[Path(r["path"]).name].split("|"))
