"""Latin-1 file names end to end (issue 22): kept byte for byte in the CSVs, read back by every reader,
shown escaped (``\\xe9``) in the report; ``report``, ``predict --html`` and ``predict --dicom-out`` never crash."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.fsutil import open_names

PNG = os.fsdecode(b"caf\xe9.png")
DCM = os.fsdecode(b"radiograf\xeda.dcm")
RUN = CliRunner()


@pytest.fixture()
def latin1_folder(shared_data: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(next((shared_data / "covid3_256" / "normal").glob("*.png")), folder / PNG)
    shutil.copyfile(shared_data / "dicom" / "chest" / "udacity_nih_test1.dcm", folder / DCM)
    return folder


def _predict(folder: Path, model: Path, out: Path, *extra: str):
    return RUN.invoke(
        app, ["predict", str(folder), "-m", str(model), "-o", str(out), "--backend", "torch", "--workers", "0", *extra]
    )


def test_predict_html_and_report_show_latin1_names_escaped(
    latin1_folder: Path, tiny_model: Path, tmp_path: Path
) -> None:
    preds, page = tmp_path / "p.csv", tmp_path / "r.html"
    res = _predict(latin1_folder, tiny_model, preds, "--html", str(page))
    assert res.exit_code == 0, res.output
    assert b"caf\xe9.png" in preds.read_bytes()  # the CSV keeps the name's own bytes
    html = page.read_bytes().decode("utf-8")  # the page is valid UTF-8
    assert "caf\\xe9.png" in html and "radiograf\\xeda.dcm" in html

    res = RUN.invoke(app, ["report", str(preds), "-o", str(tmp_path / "again.html")])
    assert res.exit_code == 0, res.output
    assert "caf\\xe9.png" in (tmp_path / "again.html").read_bytes().decode("utf-8")


def test_predict_jsonl_report(latin1_folder: Path, tiny_model: Path, tmp_path: Path) -> None:
    preds = tmp_path / "p.jsonl"
    assert _predict(latin1_folder, tiny_model, preds).exit_code == 0
    res = RUN.invoke(app, ["report", str(preds), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert "caf\\xe9.png" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_predict_dicom_out_with_a_latin1_name(latin1_folder: Path, tiny_model: Path, tmp_path: Path) -> None:
    preds, dcm = tmp_path / "p.csv", tmp_path / "dcm"
    res = _predict(latin1_folder, tiny_model, preds, "--dicom-out", str(dcm))
    assert res.exit_code == 0, res.output
    with open_names(dcm / "dicom_results.csv") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert rows[DCM]["status"] == "written" and Path(rows[DCM]["sr"]).is_file()
    assert rows[PNG]["status"] == "skipped"
    assert b"radiograf\xeda.dcm" in (dcm / "dicom_results.csv").read_bytes()
    res = _predict(latin1_folder, tiny_model, preds, "--dicom-out", str(dcm), "--resume")  # the index is read back
    assert res.exit_code == 0, res.output
