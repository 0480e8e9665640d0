"""Exit codes mean one thing each: 0 all good, 1 some inputs failed, 2 usage error, 3 internal error.

An internal error is provoked by making a core function raise (a bug injected where any command
would meet it); the handler under test is the real root group, in-process and in a real process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import cxrtool.envinfo
from cxrtool.cli.main import app
from cxrtool.errors import CxrError

runner = CliRunner()


@pytest.fixture()
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "logs"
    monkeypatch.setenv("CXRTOOL_LOG_DIR", str(folder))
    monkeypatch.delenv("CXRTOOL_DEBUG", raising=False)
    return folder


def _explode() -> None:
    raise ZeroDivisionError("simulated bug in the core")


def _crash_log(stderr: str, log_dir: Path) -> Path:
    [log] = list(log_dir.glob("crash-*.log"))
    assert str(log) in stderr  # the printed path is the file that exists
    return log


def test_internal_error_exits_3_with_one_line_and_a_log(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cxrtool.envinfo, "collect", _explode)
    result = runner.invoke(app, ["doctor"], terminal_width=1000)
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("internal error: ZeroDivisionError: simulated bug in the core")
    assert "Traceback" not in result.output and "--debug" in lines[0]
    log = _crash_log(result.stderr, log_dir).read_text()
    assert "Traceback (most recent call last)" in log and "_explode" in log and "ZeroDivisionError" in log


@pytest.mark.parametrize("how", [["--debug"], "env"])
def test_debug_shows_the_traceback_in_the_terminal(how, log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cxrtool.envinfo, "collect", _explode)
    if how == "env":
        monkeypatch.setenv("CXRTOOL_DEBUG", "1")
    result = runner.invoke(app, [*(how if how != "env" else []), "doctor"], terminal_width=1000)
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.stderr and "in _explode" in result.stderr
    assert "internal error: ZeroDivisionError" in result.stderr
    _crash_log(result.stderr, log_dir)


def test_a_real_process_exits_3(tmp_path: Path) -> None:
    """Through Typer's standalone main and ``sys.exit``, as the ``cxrtool`` script runs."""
    script = (
        "import cxrtool.envinfo as e\n"
        "def boom(): raise KeyError('simulated')\n"
        "e.collect = boom\n"
        "from cxrtool.cli.main import app\n"
        "app(['doctor'], prog_name='cxrtool')\n"
    )
    env = {**os.environ, "CXRTOOL_LOG_DIR": str(tmp_path)}
    env.pop("CXRTOOL_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "internal error: KeyError" in proc.stderr and "Traceback" not in proc.stderr
    assert len(list(tmp_path.glob("crash-*.log"))) == 1


def test_user_error_escaping_a_command_is_a_usage_error(log_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise CxrError("scan[1].png: a user-fixable problem")

    monkeypatch.setattr(cxrtool.envinfo, "collect", refuse)
    result = runner.invoke(app, ["doctor"], terminal_width=1000)
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: scan[1].png: a user-fixable problem"  # printed literally, no markup
    assert not log_dir.exists()  # not a crash


def test_usage_error_from_the_parser_exits_2(log_dir: Path) -> None:
    result = runner.invoke(app, ["predict", "--no-such-option"])
    assert result.exit_code == 2 and "No such option: --no-such-option" in result.output
    assert not log_dir.exists()


def test_some_inputs_failed_exit_1_and_file_names_with_brackets_print_literally(tmp_path: Path, monkeypatch) -> None:
    """``prep folder``: one unreadable film among good ones -> exit 1, named exactly, the manifest still written."""
    monkeypatch.setenv("CXRTOOL_SALT", "cli-test-salt")
    rng = np.random.default_rng(0)
    for cls in ("covid", "normal"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32), np.uint8)).save(tmp_path / "data" / cls / f"{cls}{i}.png")
    bad = tmp_path / "data" / "covid" / "scan[1].png"
    bad.write_text("not an image")
    result = runner.invoke(
        app, ["prep", "folder", str(tmp_path / "data"), "-o", str(tmp_path / "m.csv")], terminal_width=1000
    )
    assert result.exit_code == 1, result.output
    assert "failed: " in result.stderr and "scan[1].png" in result.stderr  # not "scan.png"
    assert (tmp_path / "m.csv").is_file()


def test_all_good_exit_0(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CXRTOOL_SALT", "cli-test-salt")
    rng = np.random.default_rng(1)
    for cls in ("covid", "normal"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32), np.uint8)).save(tmp_path / "data" / cls / f"{i}.png")
    result = runner.invoke(app, ["prep", "folder", str(tmp_path / "data"), "-o", str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    assert "failed:" not in result.stderr
