"""``cxrtool prep nih`` / ``prep folder`` through the CLI: exit codes, output, help."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.manifest import read_manifest

runner = CliRunner()


@pytest.fixture(autouse=True)
def _salt(monkeypatch):
    monkeypatch.setenv("CXRTOOL_SALT", "test-salt")  # never create ~/.config/cxrtool/salt in tests


def test_help_texts():
    for cmd in ("nih", "folder"):
        res = runner.invoke(app, ["prep", cmd, "--help"])
        assert res.exit_code == 0 and "--out" in res.output


def test_nih_nih1000(shared_data: Path, tmp_path: Path):
    nih = shared_data / "nih"
    out = tmp_path / "nih1000.csv"
    res = runner.invoke(
        app,
        [
            "prep",
            "nih",
            str(nih / "Data_Entry_2017_v2020.csv"),
            "--images",
            str(nih / "nih1000_64"),
            "--drop-missing",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert str(out) in res.stdout
    m = read_manifest(out)
    assert len(m.rows) == 1000 and m.task.name == "multilabel"
    assert {r["split"] for r in m.rows} == {"train", "val", "test"}


def test_nih_exit_codes(small_nih: Path, tmp_path: Path):
    args = ["prep", "nih", str(small_nih / "Data_Entry.csv"), "-o", str(tmp_path / "m.csv")]
    res = runner.invoke(app, [*args, "--images", str(small_nih / "imgs")])
    assert res.exit_code == 1 and "2 listed but not found" in res.output  # missing kept -> some inputs failed
    res = runner.invoke(app, [*args, "--map", "covid=COVID-19"])
    assert res.exit_code == 2 and "unknown finding 'COVID-19'" in res.output
    res = runner.invoke(
        app, [*args, "--map", "pneumonia=Pneumonia,normal=No Finding", "--views", "PA", "--max-follow-up", "0"]
    )
    assert res.exit_code == 0, res.output
    m = read_manifest(tmp_path / "m.csv")
    assert m.class_names == ["normal", "pneumonia"] and m.rows
    assert all(r["follow_up"] == "0" and r["view"] == "PA" for r in m.rows)


def test_folder(class_tree: Path, tmp_path: Path):
    out = tmp_path / "m.csv"
    res = runner.invoke(app, ["prep", "folder", str(class_tree), "-o", str(out)])
    assert res.exit_code == 1  # broken.png failed, named with its reason
    assert "broken.png" in res.output and "3 near-duplicate groups" in res.output
    assert len(read_manifest(out).rows) == 39
    res = runner.invoke(
        app, ["prep", "folder", str(class_tree), "-o", str(out), "--val-fraction", "0.6", "--test-fraction", "0.6"]
    )
    assert res.exit_code == 2 and "sum to less than 1" in res.output
