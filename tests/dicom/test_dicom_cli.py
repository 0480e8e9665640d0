"""``cxrtool prep dicom`` through Typer's CliRunner: exit codes, messages, options."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from cxrtool.cli import _options
from cxrtool.cli.main import app as cxrtool_app
from cxrtool.dicom.pixels import OUTPUT_BITS, WINDOW_POLICIES
from cxrtool.manifest import read_manifest


@pytest.fixture()
def app(monkeypatch) -> typer.Typer:
    monkeypatch.setenv("CXRTOOL_SALT", "cli-test-salt")  # never touch ~/.config in tests
    return cxrtool_app


runner = CliRunner()


def table_counts(text: str) -> dict[str, int]:
    """``{first cell: last cell}`` of the rows of a Rich table whose last cell is a number."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) >= 2 and cells[-1].isdigit():
            rows[cells[0]] = int(cells[-1])
    return rows


def test_some_failed_exit_1_names_each_file(app, synthetic_dir, tmp_path):
    result = runner.invoke(app, ["prep", "dicom", str(synthetic_dir), str(tmp_path / "out"), "-j", "1"])
    assert result.exit_code == 1, result.output
    assert "empty.dcm: empty file (0 bytes)" in result.stderr
    assert "truncated.dcm:" in result.stderr
    rows = read_manifest(tmp_path / "out" / "manifest.csv").rows
    assert len(rows) == 15
    status = Counter(r["status"] for r in rows)
    counts = table_counts(result.stdout)  # the summary table says what the manifest holds
    assert (counts["converted"], counts["skipped"], counts["failed"]) == (
        status["ok"],
        status["skipped"],
        status["failed"],
    )
    assert counts["failed"] == 2 and counts["converted"] == 15 - 2 - counts["skipped"]


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
    png = np.asarray(Image.open(out / "voilut.png"))  # the options reached the pixels, not only the manifest
    assert png.dtype == np.uint16 and max(png.shape) == 16  # --bits 16, --size 16 (long side)
    assert png.min() == 0 and png.max() == 65535  # --window minmax spans the full output range
    again = runner.invoke(app, [*args, "--manifest", str(tmp_path / "m.csv"), "--strict"])
    assert again.exit_code == 0 and "resumed" in again.stdout


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--window", "auto"], ["--window", *WINDOW_POLICIES]),  # names the option and every valid choice
        (["--bits", "12"], ["--bits", *map(str, OUTPUT_BITS)]),
        (["--size", "2"], ["--size", "greater than or equal to 8"]),
    ],
)
def test_bad_options_exit_2_before_writing(app, synthetic_dir, tmp_path, extra, expected):
    result = runner.invoke(app, ["prep", "dicom", str(synthetic_dir), str(tmp_path / "o"), *extra])
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output
    assert not (tmp_path / "o").exists()


def test_same_folder_is_a_usage_error(app, synthetic_dir):
    result = runner.invoke(app, ["prep", "dicom", str(synthetic_dir), str(synthetic_dir)])
    assert result.exit_code == 2
    assert "must differ from the input folder" in result.stderr


def test_window_choices_match_the_pipeline():
    assert tuple(w.value for w in _options.Window) == WINDOW_POLICIES
