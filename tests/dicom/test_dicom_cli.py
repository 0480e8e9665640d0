"""``cxrtool prep dicom`` through Typer's CliRunner: exit codes, messages, options."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from cxrtool.cli import prep_dicom
from cxrtool.dicom.pixels import WINDOW_POLICIES
from cxrtool.manifest import read_manifest


@pytest.fixture()
def app(monkeypatch) -> typer.Typer:
    monkeypatch.setenv("CXRTOOL_SALT", "cli-test-salt")  # never touch ~/.config in tests
    root, group = typer.Typer(), typer.Typer()
    prep_dicom.register(group)
    root.add_typer(group, name="prep")
    return root


runner = CliRunner()


def test_some_failed_exit_1_names_each_file(app, synthetic_dir, tmp_path):
    result = runner.invoke(app, ["prep", "dicom", str(synthetic_dir), str(tmp_path / "out"), "-j", "1"])
    assert result.exit_code == 1, result.output
    assert "empty.dcm: empty file (0 bytes)" in result.stderr
    assert "truncated.dcm:" in result.stderr
    assert "converted" in result.stdout and "11" in result.stdout
    assert len(read_manifest(tmp_path / "out" / "manifest.csv").rows) == 15


def test_all_converted_exit_0_and_options(app, synthetic_dir, tmp_path):
    out = tmp_path / "out"
    args = ["prep", "dicom", str(synthetic_dir / "sub"), str(out), "--window", "minmax", "--bits", "16", "--size", "16"]
    result = runner.invoke(app, [*args, "--manifest", str(tmp_path / "m.csv"), "--strict"])
    assert result.exit_code == 0, result.output
    rows = read_manifest(tmp_path / "m.csv").rows
    assert {r["status"] for r in rows} == {"ok", "skipped"}  # photo.bin is not a DICOM
    assert all(r["settings"] == "window=minmax;bits=16;size=16;frames=first" for r in rows)
    m = read_manifest(tmp_path / "m.csv")
    voilut = next(r for r in m.rows if r["input"] == "voilut.dcm")
    assert voilut["path"] == "out/voilut.png" and m.resolve(voilut) == (out / "voilut.png").resolve()
    again = runner.invoke(app, [*args, "--manifest", str(tmp_path / "m.csv"), "--strict"])
    assert again.exit_code == 0 and "resumed" in again.stdout


@pytest.mark.parametrize(
    "extra, message",
    [(["--window", "auto"], "auto"), (["--bits", "12"], "12"), (["--size", "2"], "greater than or equal to 8")],
)
def test_bad_options_exit_2(app, synthetic_dir, tmp_path, extra, message):
    result = runner.invoke(app, ["prep", "dicom", str(synthetic_dir), str(tmp_path / "o"), *extra])
    assert result.exit_code == 2 and message in result.output


def test_same_folder_is_a_usage_error(app, synthetic_dir):
    result = runner.invoke(app, ["prep", "dicom", str(synthetic_dir), str(synthetic_dir)])
    assert result.exit_code == 2
    assert "must differ from the input folder" in result.stderr


def test_window_choices_match_the_pipeline():
    assert tuple(w.value for w in prep_dicom.Window) == WINDOW_POLICIES
