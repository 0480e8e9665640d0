"""``prep dicom``, ``predict`` and ``explain`` over the awkward-input corpus, through the real CLI.

Each run must end with exit code 1 (some inputs failed), no traceback or "internal error", one row
per input with the expected status and reason, and the non-UTF-8 names kept byte-for-byte in the
outputs (read back with :data:`cxrtool.fsutil.NAME_ERRORS`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from corpus import LATIN1_DICOM, LATIN1_NAME, Case
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.fsutil import NAME_ERRORS
from cxrtool.manifest import read_manifest

runner = CliRunner()


def _invoke(args: list[str]):
    result = runner.invoke(app, args)
    text = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]
    return result


def _rows(path: Path, key: str) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors=NAME_ERRORS) as fh:
        return {row[key]: row for row in csv.DictReader(fh)}


def _check(case: Case, expect: str, error: str) -> None:
    if expect == "either":
        return
    if expect == "ok":
        assert not error, f"{case.name}: {error}"
    else:
        assert error, f"{case.name}: expected a failure"
        assert case.reason.lower() in error.lower(), f"{case.name}: {error!r} lacks {case.reason!r}"


def test_prep_dicom_over_the_corpus(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRTOOL_SALT", "hardening-salt")
    root, cases = corpus
    out = tmp_path / "png"
    result = _invoke(["prep", "dicom", str(root), str(out), "-j", "2"])
    assert result.exit_code == 1
    rows = {r["input"]: r for r in read_manifest(out / "manifest.csv").rows}
    assert len(rows) == len(cases)
    for case in cases:
        row = rows[Path(os.path.relpath(case.path, root)).as_posix()]
        if case.prep != "either":
            assert row["status"] == case.prep, f"{case.name}: {row['status']} {row['error']}"
        if case.prep == "failed":
            assert case.reason.lower() in row["error"].lower(), f"{case.name}: {row['error']!r}"
    latin = rows[os.fsdecode(LATIN1_DICOM)]
    assert latin["status"] == "ok" and (out / latin["path"]).is_file()  # the name round-trips to the PNG
    assert os.fsencode(out / latin["path"]).endswith(b"r\xe9sum\xe9.png")


def test_prep_dicom_symlink_loop_given_directly(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRTOOL_SALT", "hardening-salt")
    loop = tmp_path / "loop.dcm"
    os.symlink(loop.name, loop)
    result = _invoke(["prep", "dicom", str(loop), str(tmp_path / "out")])
    assert result.exit_code == 1
    (row,) = read_manifest(tmp_path / "out" / "manifest.csv").rows
    assert row["status"] == "failed" and row["error"] == "symbolic link loop"


def test_predict_over_the_corpus(corpus, tiny_model, tmp_path):
    root, cases = corpus
    out = tmp_path / "preds.csv"
    result = _invoke(["predict", str(root), "--model", str(tiny_model), "--out", str(out), "--workers", "0", "-b", "8"])
    assert result.exit_code == 1
    rows = _rows(out, "path")
    assert len(rows) == len(cases)
    for case in cases:
        row = rows[str(case.path)]
        _check(case, case.load, row["error"])
        if not row["error"]:
            assert all(0.0 <= float(row[f"p:{c}"]) <= 1.0 for c in ("covid", "normal", "viral_pneumonia"))
    assert str(root / os.fsdecode(LATIN1_NAME)) in rows


def test_explain_over_the_corpus(corpus, tiny_model, tmp_path):
    root, cases = corpus
    out = tmp_path / "heatmaps"
    result = _invoke(["explain", str(root), "--model", str(tiny_model), "--out", str(out), "-b", "8"])
    assert result.exit_code == 1
    rows = _rows(out / "explain.csv", "path")
    assert len(rows) == len(cases)
    for case in cases:
        _check(case, case.load, rows[str(case.path)]["error"])
    latin = rows[str(root / os.fsdecode(LATIN1_NAME))]
    assert Path(latin["panel"]).is_file()


@pytest.mark.parametrize("value", ["lots", "-5", "0"])
def test_bad_pixel_limit_is_a_usage_error(value, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("CXRTOOL_SALT", "hardening-salt")
    monkeypatch.setenv("CXRTOOL_MAX_PIXELS", value)
    root, _ = corpus
    result = _invoke(["prep", "dicom", str(root), str(tmp_path / "out")])
    assert result.exit_code == 2 and "CXRTOOL_MAX_PIXELS" in result.output
    assert not (tmp_path / "out" / "manifest.csv").exists()


def test_pixel_limit_applies_to_every_command(corpus, tiny_model, tmp_path, monkeypatch):
    """A limit below the corpus' 48x40 films turns them into "too large" rows in all three commands."""
    monkeypatch.setenv("CXRTOOL_SALT", "hardening-salt")
    monkeypatch.setenv("CXRTOOL_MAX_PIXELS", "100")
    root, _ = corpus
    good = [root / "good.png", root / "good.dcm"]
    _invoke(["prep", "dicom", str(good[1]), str(tmp_path / "png")])
    assert "too large" in read_manifest(tmp_path / "png" / "manifest.csv").rows[0]["error"]
    _invoke(
        ["predict", *map(str, good), "--model", str(tiny_model), "--out", str(tmp_path / "p.csv"), "--workers", "0"]
    )
    assert all("too large" in r["error"] for r in _rows(tmp_path / "p.csv", "path").values())
    _invoke(["explain", *map(str, good), "--model", str(tiny_model), "--out", str(tmp_path / "x")])
    assert all("too large" in r["error"] for r in _rows(tmp_path / "x" / "explain.csv", "path").values())
