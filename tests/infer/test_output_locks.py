"""One run per output: real concurrent processes on one output, a lock left by a killed run, every command refusing."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrtool.locks import OutputBusy, lock_path, owned_output

HOLD = textwrap.dedent(
    """
    import sys, time
    from cxrtool.locks import owned_output
    with owned_output(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
    """
)


def hold_in_another_process(path: Path) -> subprocess.Popen:
    """A live process that owns ``path`` until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def cxrtool(*args: object) -> subprocess.Popen:
    """``cxrtool ARGS`` as a real process of its own."""
    argv = [sys.executable, "-m", "cxrtool", *map(str, args)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_owner(path: Path, pid: int, timeout: float = 120) -> None:
    """Until ``pid`` has written itself into the lock of ``path`` (it owns the output now)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if lock_path(path).read_text().strip() == str(pid):
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never took the lock of {path}")


def read_rows(out: Path) -> list[str]:
    """Paths of every row; fails on a torn row (missing columns, or probabilities that do not parse or sum to 1)."""
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        assert None not in row and None not in row.values(), row  # a torn row has too many or too few fields
        probs = [v for k, v in row.items() if k.startswith("p:")]
        assert (row["error"] and probs == [""] * len(probs)) or abs(sum(map(float, probs)) - 1.0) < 1e-4, row
    return [row["path"] for row in rows]


def test_a_second_holder_is_refused_with_the_owners_pid_and_a_dead_owners_lock_is_taken_over(tmp_path):
    out = tmp_path / "preds.csv"
    holder = hold_in_another_process(out)
    try:
        with pytest.raises(OutputBusy, match=rf"in use by another cxrtool run \(pid {holder.pid}\)"):
            with owned_output(tmp_path / "sub" / ".." / "preds.csv"):  # another spelling, the same output
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with owned_output(out) as owned:
        assert owned.taken_over_from == holder.pid
        assert lock_path(out).read_text().strip() == str(os.getpid())
    assert lock_path(out).read_text() == ""  # released: nobody named as owner
    assert not out.exists()  # the lock never creates the output itself


@pytest.fixture()
def films(shared_data, tmp_path) -> Path:
    """60 real 640 px films (links into the fixture data): a run lasts several times a second run's start-up."""
    folder = tmp_path / "films"
    for cls in ("covid", "normal", "viral_pneumonia"):
        (folder / cls).mkdir(parents=True)
        for f in sorted((shared_data / "covid3" / cls).iterdir())[:20]:
            (folder / cls / f.name).symlink_to(f)
    return folder


@pytest.mark.slow  # two or three full `cxrtool predict` processes: minutes on a loaded 2-core box
def test_two_predict_runs_on_one_output_lose_tear_and_duplicate_nothing(tiny_ckpt, films, tmp_path):
    from cxrtool.infer.jobs import iter_jobs

    everything = sorted(str(p) for p, _ in iter_jobs([films]))
    out = tmp_path / "preds.csv"
    common = (films, "--model", tiny_ckpt, "--out", out, "--backend", "torch", "--workers", "1", "-b", "8")

    first = cxrtool("predict", *common)
    wait_for_owner(out, first.pid)
    second = cxrtool("predict", *common)
    _, err2 = second.communicate(timeout=300)
    first_still_running = first.poll() is None
    _, err1 = first.communicate(timeout=600)
    assert first_still_running, "the first run ended before the second started: nothing concurrent was tested"
    assert second.returncode == 2 and f"pid {first.pid}" in err2, err2
    assert first.returncode == 0, err1
    paths = read_rows(out)
    assert sorted(paths) == everything  # no row lost, none duplicated


@pytest.mark.slow  # two or three full `cxrtool predict` processes: minutes on a loaded 2-core box
def test_two_resume_runs_after_a_kill_lose_tear_and_duplicate_nothing(tiny_ckpt, films, tmp_path):
    from cxrtool.infer.jobs import iter_jobs

    everything = sorted(str(p) for p, _ in iter_jobs([films]))
    out = tmp_path / "preds.csv"
    common = (films, "--model", tiny_ckpt, "--out", out, "--backend", "torch", "--workers", "1", "-b", "4")

    killed = cxrtool("predict", *common)
    wait_for_owner(out, killed.pid)
    while (not out.exists() or out.stat().st_size < 2000) and killed.poll() is None:  # some batches written
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)  # leaves its lock file (with its pid) and maybe a torn row
    killed.wait()
    assert killed.returncode == -signal.SIGKILL

    first = cxrtool("predict", *common, "--resume")  # takes over the dead run's lock
    wait_for_owner(out, first.pid)
    second = cxrtool("predict", *common, "--resume")
    _, err2 = second.communicate(timeout=300)
    first_still_running = first.poll() is None
    _, err1 = first.communicate(timeout=600)
    assert first_still_running, "the first resume ended before the second started: nothing concurrent was tested"
    assert second.returncode == 2 and f"pid {first.pid}" in err2, err2
    assert first.returncode == 0, err1
    paths = read_rows(out)
    assert sorted(paths) == everything


def small_manifest(shared_data: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for cls in ("covid", "normal", "viral_pneumonia"):
        for i, f in enumerate(sorted((shared_data / "covid3_256" / cls).glob("*.png"))[:6]):
            rows.append({"path": str(f), "label": cls, "split": "val" if i >= 4 else "train"})
    path = folder / "train.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_every_command_refuses_an_output_another_run_owns(tiny_ckpt, shared_data, tmp_path):
    from cxrtool.cli.main import app

    manifest = small_manifest(shared_data, tmp_path / "m")
    film = next((shared_data / "covid3_256" / "covid").glob("*.png"))
    cases = {
        "explain": (tmp_path / "heatmaps", ["explain", film, "--model", tiny_ckpt, "--out", tmp_path / "heatmaps"]),
        "prep dicom": (tmp_path / "png", ["prep", "dicom", shared_data / "dicom" / "chest", tmp_path / "png"]),
        "prep folder": (tmp_path / "m.csv", ["prep", "folder", shared_data / "covid3_256", "-o", tmp_path / "m.csv"]),
        "train": (
            tmp_path / "run",
            [
                "train",
                manifest,
                "--init",
                "none",
                "--arch",
                "densenet121",
                "--input-size",
                "32",
                "--epochs",
                "1",
                "-b",
                "4",
                "-j",
                "0",
                "--device",
                "cpu",
                "--out",
                tmp_path / "run",
            ],
        ),
    }
    for name, (owned, argv) in cases.items():
        holder = hold_in_another_process(owned)
        try:
            result = CliRunner().invoke(app, [str(a) for a in argv])
        finally:
            holder.send_signal(signal.SIGKILL)
            holder.wait()
        assert result.exit_code == 2, (name, result.output)
        assert f"in use by another cxrtool run (pid {holder.pid})" in " ".join(result.output.split()), (
            name,
            result.output,
        )
        leftovers = [p.name for p in owned.rglob("*")] if owned.is_dir() else []
        assert leftovers == [], (name, leftovers)  # refused before writing anything
