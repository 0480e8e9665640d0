"""The decode pool under the signals a run meets: Ctrl-C and a decoder process that dies.

Ctrl-C reaches the whole foreground process group, decode workers included.  A worker that took it
died inside ``call_queue.get`` and printed ``Process ForkServerProcess-1: Traceback ... KeyboardInterrupt``
on the run's stderr; workers now leave Ctrl-C to the run, which shuts the pool down in order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_no_stray_processes import descendants, running

SYMPTOMS = ("Traceback", "resource_tracker", "KeyError", "leaked")


def _start_predict(folder: Path, model: Path, out: Path) -> subprocess.Popen:
    """``cxrtool predict`` (torch, one decode worker) in its own process group, Ctrl-C handled as in a shell."""
    return subprocess.Popen(
        [sys.executable, "-m", "cxrtool", "predict", str(folder), "-m", str(model), "-o", str(out)]
        + ["--backend", "torch", "--workers", "1", "-b", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        # a test run started in the background inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_until_decoding(proc: subprocess.Popen, out: Path, timeout: float = 300) -> set[int]:
    """Children once the resource tracker, the forkserver and a decode worker run and rows are being written."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"ended too early: {proc.stderr.read().decode()[-2000:]}"
        kids = running(descendants(proc.pid))
        if len(kids) >= 3 and out.exists() and out.stat().st_size > 300:
            return kids
        time.sleep(0.05)
    raise AssertionError("predict never reached its decode workers")


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_mid_run_closes_the_pool_quietly(how, tiny_ckpt, shared_data, tmp_path):
    """Ctrl-C reaches the whole process group; ``kill``/``timeout`` send SIGTERM to the run alone, which unwinds
    like Ctrl-C.  Either way: exit 130, no worker traceback, the pool's semaphores released in order (before, SIGTERM
    left "resource_tracker: There appear to be 5 leaked semaphore objects"), no child process outliving the run.

    64-px thumbnails decode faster than the model runs, so the worker waits on its task queue when the signal comes
    (a worker interrupted inside a task hands the KeyboardInterrupt back as that task's result instead)."""
    out = tmp_path / "p.csv"
    proc = _start_predict(shared_data / "nih" / "nih1000_64", tiny_ckpt, out)
    try:
        kids = _wait_until_decoding(proc, out)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        else:
            proc.send_signal(signal.SIGTERM)
        stderr = proc.communicate(timeout=120)[1].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr  # interrupted, not finished: the signal arrived mid-run
    for symptom in SYMPTOMS:
        assert symptom not in stderr, stderr
    deadline = time.monotonic() + 30
    while running(kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(kids)


def test_decode_worker_killed_mid_run_is_replaced_quietly(tiny_ckpt, shared_data, tmp_path):
    """A dead decoder costs at most its own films; the fresh pool leaves no tracker warning or traceback."""
    out = tmp_path / "p.csv"
    folder = shared_data / "covid3_256"
    proc = _start_predict(folder, tiny_ckpt, out)
    try:
        kids = _wait_until_decoding(proc, out)
        workers = {k for k in kids if Path(f"/proc/{k}/stat").read_text().split(") ")[1].split()[1] != str(proc.pid)}
        assert workers, "no decode worker below the forkserver"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        stderr = proc.communicate(timeout=300)[1].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode in (0, 1), stderr
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == sum(1 for _ in folder.rglob("*.png"))  # every film has its row, retried or failed
    for symptom in SYMPTOMS:
        assert symptom not in stderr, stderr
