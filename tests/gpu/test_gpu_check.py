"""``make gpu-check``'s script: on a machine without CUDA it stops at once with a clear reason and writes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run for real")
def test_without_cuda_it_stops_at_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "gpu-check: no CUDA device" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()  # nothing installed, tested or written


def test_make_target_runs_the_script():
    makefile = (REPO / "Makefile").read_text()
    target = makefile[makefile.index("\ngpu-check:") :].splitlines()[1:3]
    assert any("bench/gpu_check.py" in line for line in target)
