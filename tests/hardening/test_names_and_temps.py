"""File names that are not UTF-8, orphaned temp files of killed writes, and non-finite model outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxrtool.fsutil import (
    NAME_ERRORS,
    atomic_path,
    display_path,
    remove_stale_temps,
    safe_text,
)

LATIN1 = os.fsdecode(b"caf\xe9.png")  # how Python hands us a Latin-1 name from a Windows share


class TestNames:
    def test_display_forms_are_valid_utf8(self):
        assert display_path(Path("/data") / LATIN1) == "/data/caf\\xe9.png"
        assert display_path(b"/data/caf\xc3\xa9.png") == "/data/café.png"  # valid UTF-8 stays as it is
        assert safe_text("plain") == "plain"
        for text in (safe_text(LATIN1), safe_text("lone \ud800 surrogate")):
            text.encode("utf-8")  # never raises

    def test_manifest_keeps_the_name_byte_for_byte(self, tmp_path):
        from cxrtool.manifest import read_manifest, write_manifest

        (tmp_path / LATIN1).write_bytes(b"x")
        path = write_manifest(tmp_path / "m.csv", [{"path": LATIN1, "label": "normal"}])
        assert b"caf\xe9.png" in path.read_bytes()  # the bytes on disk, not an escape
        (row,) = read_manifest(path).rows
        assert row["path"] == LATIN1 and read_manifest(path).resolve(row).is_file()

    def test_name_errors_round_trip_through_csv(self, tmp_path):
        import csv

        with open(tmp_path / "x.csv", "w", newline="", encoding="utf-8", errors=NAME_ERRORS) as fh:
            csv.writer(fh).writerow([LATIN1])
        with open(tmp_path / "x.csv", newline="", encoding="utf-8", errors=NAME_ERRORS) as fh:
            assert next(csv.reader(fh)) == [LATIN1]


_KILLED_WRITER = """
import os, signal, sys
from cxrtool.fsutil import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a checkpoint")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_write(dst: Path) -> Path:
    """Run a writer that is SIGKILLed inside ``atomic_path``; return the temp file it left."""
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(dst)], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    (orphan,) = [p for p in dst.parent.iterdir() if p.name != dst.name]
    return orphan


class TestStaleTemps:
    def test_temp_names_carry_the_pid_and_suffix(self, tmp_path):
        with atomic_path(tmp_path / "best.safetensors") as tmp:
            assert tmp.name.startswith(f".best.{os.getpid()}-") and tmp.name.endswith(".tmp.safetensors")
            tmp.write_bytes(b"ok")
            assert remove_stale_temps(tmp_path) == []  # our own live write is never touched
        assert (tmp_path / "best.safetensors").read_bytes() == b"ok"

    def test_killed_write_is_cleaned_by_the_next_run(self, tmp_path):
        orphan = _killed_write(tmp_path / "best.safetensors")
        assert orphan.read_bytes() == b"half a checkpoint" and not (tmp_path / "best.safetensors").exists()
        keep = tmp_path / "notes.tmp.txt"  # not atomic_path's pattern: left alone
        keep.write_text("mine")
        assert remove_stale_temps(tmp_path) == [orphan]
        assert not orphan.exists() and keep.exists()

    def test_long_names_fit_name_max(self, tmp_path):
        """A final name near NAME_MAX still gets a temp file (the temp name is cut, the final one kept)."""
        dst = tmp_path / ("L" * 240 + ".heatmap.npy")
        with atomic_path(dst) as tmp:
            assert len(os.fsencode(tmp.name)) <= 255
            tmp.write_bytes(b"x")
        assert dst.read_bytes() == b"x"

    def test_train_state_save_and_resume_remove_orphans(self, tmp_path):
        import torch

        from cxrtool.train.state import STATE_FILE, load_state, save_state

        orphan = _killed_write(tmp_path / "last.safetensors")
        save_state(tmp_path / STATE_FILE, {"epoch": torch.tensor(1)})
        assert not orphan.exists()
        orphan = _killed_write(tmp_path / STATE_FILE)
        assert int(load_state(tmp_path)["epoch"]) == 1 and not orphan.exists()

    def test_prep_dicom_removes_orphaned_pngs(self, tmp_path):
        from corpus import dicom_bytes

        from cxrtool.dicom.prepare import PrepOptions, prepare_folder

        src, dst = tmp_path / "src", tmp_path / "out" / "sub"
        src.mkdir()
        (src / "a.dcm").write_bytes(dicom_bytes())
        dst.mkdir(parents=True)
        orphan = _killed_write(dst / "a.png")
        prepare_folder(src, tmp_path / "out", options=PrepOptions(keep_phi=True))
        assert not orphan.exists()


def test_check_finite_flags_nan_and_inf_rows():
    from cxrtool.infer.backends import check_finite

    logits = np.array([[0.1, 2.0, -1.0], [np.nan, 0.0, 1.0], [np.inf, -np.inf, 0.0]], dtype=np.float32)
    reasons = check_finite(logits, ["a.png", "b.png", "c.png"])
    assert reasons[0] is None
    assert reasons[1] == "model output is not finite (NaN or infinity in 1 of 3 logits)"
    assert reasons[2] == "model output is not finite (NaN or infinity in 2 of 3 logits)"
    with pytest.raises(ValueError, match="for 2 inputs"):
        check_finite(logits, ["a", "b"])
