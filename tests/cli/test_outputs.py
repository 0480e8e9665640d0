"""Outputs that cannot be written are refused before any input is read: one line naming the path, exit 2.

Each command gets an input that would fail differently if it were read first (a missing or empty
model, an empty manifest), so the message proves the order; the output path is never created.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.errors import CxrError
from cxrtool.fsutil import check_writable_output

runner = CliRunner()
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def _file(path: Path) -> Path:
    path.write_text("x")
    return path


class TestCheckWritableOutput:
    def test_accepts_new_and_existing_paths(self, tmp_path: Path) -> None:
        (tmp_path / "old.csv").write_text("x")
        for path, kind in (
            (tmp_path / "new" / "deeper" / "p.csv", "file"),
            (tmp_path / "old.csv", "file"),
            (tmp_path, "dir"),
            (tmp_path / "a" / "b", "dir"),
        ):
            assert check_writable_output(path, kind) == path
        assert sorted(p.name for p in tmp_path.iterdir()) == ["old.csv"]  # checking creates nothing

    @pytest.mark.parametrize(
        ("make", "kind", "reason"),
        [
            (lambda t: t, "file", "it is a folder"),
            (lambda t: _file(t / "f"), "dir", "exists and is not a folder"),
            (lambda t: _file(t / "f") / "p.csv", "file", "is not a folder"),
            (lambda t: _file(t / "f") / "sub", "dir", "is not a folder"),
            (lambda t: os.symlink(t / "nowhere", t / "l") or t / "l", "file", "broken symbolic link"),
            (lambda t: Path("/dev/null"), "file", "not a regular file"),
            (lambda t: Path("/proc/cxrtool-test.csv"), "file", "kernel filesystem"),
            (lambda t: Path("/sys/cxrtool-test"), "dir", "kernel filesystem"),
            (lambda t: Path("/proc/self/cxrtool"), "dir", "kernel filesystem"),
        ],
    )
    def test_refuses_with_the_path_and_the_reason(self, tmp_path: Path, make, kind: str, reason: str) -> None:
        path = make(tmp_path)
        with pytest.raises(CxrError) as info:
            check_writable_output(path, kind)
        message = str(info.value)
        assert message.startswith(f"{path}: cannot write the output here (") and reason in message
        assert "\n" not in message

    @pytest.mark.skipif(ROOT, reason="root may write into a read-only-mode folder; the mount checks cover root")
    def test_read_only_folder(self, tmp_path: Path) -> None:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            for path, kind in ((ro / "p.csv", "file"), (ro / "out", "dir"), (ro, "dir")):
                with pytest.raises(CxrError, match="not writable|permission denied"):
                    check_writable_output(path, kind)
        finally:
            ro.chmod(0o755)


def _refused(result, path: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: cannot write the output here"), result.stderr
    assert "Traceback" not in result.output


@pytest.fixture()
def films(tmp_path: Path) -> Path:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"not read before the output check")
    return tmp_path / "in"


@pytest.fixture()
def dummy(tmp_path: Path) -> Path:
    """An empty 'model' / 'manifest': reading it first would fail with a different message."""
    (tmp_path / "empty.safetensors").write_bytes(b"")
    return tmp_path / "empty.safetensors"


@pytest.mark.parametrize("flag", ["--overwrite", "--resume"])
def test_predict_out_is_a_folder(tmp_path: Path, films: Path, dummy: Path, flag: str) -> None:
    (tmp_path / "preds.csv").mkdir()
    result = runner.invoke(app, ["predict", str(films), "-m", str(dummy), "-o", str(tmp_path / "preds.csv"), flag])
    _refused(result, tmp_path / "preds.csv")
    assert "it is a folder" in result.stderr


@pytest.mark.parametrize("out", ["/proc/cxrtool-preds.csv", "/sys/cxrtool-preds.jsonl"])
def test_predict_out_on_a_kernel_filesystem(films: Path, dummy: Path, out: str) -> None:
    _refused(runner.invoke(app, ["predict", str(films), "-m", str(dummy), "-o", out]), Path(out))
    assert not Path(out).exists()


def test_explain_out_is_an_existing_file(tmp_path: Path, films: Path, dummy: Path) -> None:
    (tmp_path / "heatmaps").write_text("a file, not a folder")
    result = runner.invoke(app, ["explain", str(films), "-m", str(dummy), "--out", str(tmp_path / "heatmaps")])
    _refused(result, tmp_path / "heatmaps")
    assert (tmp_path / "heatmaps").read_text() == "a file, not a folder"


def test_prep_dicom_outputs(tmp_path: Path, films: Path, monkeypatch) -> None:
    monkeypatch.setenv("CXRTOOL_SALT", "cli-test-salt")
    _refused(runner.invoke(app, ["prep", "dicom", str(films), "/proc/cxrtool-png"]), Path("/proc/cxrtool-png"))
    (tmp_path / "m.csv").mkdir()
    result = runner.invoke(
        app, ["prep", "dicom", str(films), str(tmp_path / "png"), "--manifest", str(tmp_path / "m.csv")]
    )
    _refused(result, tmp_path / "m.csv")
    assert not (tmp_path / "png").exists()  # nothing half-written


def test_prep_manifests(tmp_path: Path, films: Path, dummy: Path, monkeypatch) -> None:
    monkeypatch.setenv("CXRTOOL_SALT", "cli-test-salt")
    _refused(
        runner.invoke(app, ["prep", "nih", str(dummy), "-o", "/sys/cxrtool-nih.csv"]), Path("/sys/cxrtool-nih.csv")
    )
    _refused(
        runner.invoke(app, ["prep", "folder", str(films), "-o", "/proc/cxrtool-m.csv"]), Path("/proc/cxrtool-m.csv")
    )


def test_train_and_evaluate_outputs(tmp_path: Path, dummy: Path) -> None:
    result = runner.invoke(
        app, ["train", str(tmp_path / "missing.csv"), "--init", "none", "--out", "/proc/cxrtool-run"]
    )
    _refused(result, Path("/proc/cxrtool-run"))
    (tmp_path / "eval").write_text("x")
    result = runner.invoke(app, ["evaluate", str(dummy), str(dummy), "--out", str(tmp_path / "eval")])
    _refused(result, tmp_path / "eval")


def test_export_out_dir(tmp_path: Path, dummy: Path) -> None:
    (tmp_path / "engines").write_text("x")
    _refused(
        runner.invoke(app, ["export", str(dummy), "--onnx", "--out-dir", str(tmp_path / "engines")]),
        tmp_path / "engines",
    )
