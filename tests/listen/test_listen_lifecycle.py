"""``cxrtool listen``: every received content analysed exactly once, transient failures retried,
``failed/`` only for films that can never be analysed, and the start-up clean-up and recovery."""

from __future__ import annotations

import contextlib
import copy
import csv
import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from listen_helpers import free_port, store_all, wait_for
from pydicom.filebase import DicomBytesIO

from cxrtool.dicom.read import read_dataset
from cxrtool.listen import ListenConfig, Listener
from cxrtool.listen.spool import Spool

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _config(ckpt, out, **kw) -> ListenConfig:
    return ListenConfig(model=ckpt, out=out, port=free_port(), **kw)


def _encoded(ds: pydicom.Dataset) -> bytes:
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _flipped(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The same instance (same SOP Instance UID) with other pixels."""
    new = copy.deepcopy(ds)
    new.PixelData = np.ascontiguousarray(np.flipud(ds.pixel_array)).tobytes()
    return new


def _truncated(ds: pydicom.Dataset) -> pydicom.Dataset:
    """What a transfer cut short leaves: the header intact, the pixel data not."""
    new = copy.deepcopy(ds)
    new.PixelData = ds.PixelData[:1000]
    return new


def _results(out: Path, kind: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted((out / "results").glob(f"*.{kind}.dcm"))]


def _rows(out: Path) -> list[dict]:
    with open(out / "predictions.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture()
def film(chest_films) -> pydicom.Dataset:
    return read_dataset(chest_films[2])  # udacity DX: uncompressed 8-bit, 1024 x 1024


def test_intact_resend_after_truncated_transfer_is_analysed(tiny_listen_ckpt, film, tmp_path):
    out = tmp_path / "out"
    listener = Listener(_config(tiny_listen_ckpt, out)).start()
    try:
        assert store_all(listener.port, [_truncated(film)]) == [0]
        assert wait_for(lambda: listener.worker.failed == 1, timeout=30)
        assert store_all(listener.port, [film]) == [0]  # the sender tries again, intact, same UID
        assert wait_for(lambda: listener.worker.processed == 1, timeout=30)
    finally:
        listener.stop()
    srs = _results(out, "sr")
    assert len(srs) == 1
    ref = srs[0].CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == film.SOPInstanceUID
    assert len(list((out / "failed").glob("*.dcm"))) == 1  # only the truncated copy
    assert [bool(r["error"]) for r in _rows(out)] == [True, False]


def test_same_uid_new_pixels_is_reanalysed_and_replaces_the_results(tiny_listen_ckpt, film, tmp_path):
    """New content: new row, new SR/SC with new UIDs replacing the old; the same content: the same UIDs, and
    predictions.csv keeps one row per distinct content."""
    out = tmp_path / "out"
    listener = Listener(_config(tiny_listen_ckpt, out)).start()

    def send(ds, processed: int) -> tuple[str, str]:
        assert store_all(listener.port, [ds]) == [0]
        assert wait_for(lambda: listener.worker.processed == processed, timeout=30)
        (sr,), (sc,) = _results(out, "sr"), _results(out, "sc")  # exactly one of each: earlier ones replaced
        return sr.SOPInstanceUID, sc.SOPInstanceUID

    try:
        first = send(film, 1)
        second = send(_flipped(film), 2)
        assert set(first).isdisjoint(second)
        assert len(_rows(out)) == 2
        again = send(film, 3)  # the first content once more: it replaces the second, with its own UIDs again
        assert again == first and len(_rows(out)) == 2
        assert send(film, 4) == first and len(_rows(out)) == 2  # an identical re-send is not analysed again
    finally:
        listener.stop()
    rows = _rows(out)
    assert rows[0]["path"] != rows[1]["path"] and rows[0]["p:covid"] != rows[1]["p:covid"]


def test_copy_arriving_while_processing_is_not_deleted(tiny_listen_ckpt, film, tmp_path):
    listener = Listener(_config(tiny_listen_ckpt, tmp_path / "out"))  # not started: the test drives the worker
    worker, spool = listener.worker, listener.spool
    try:
        first = spool.put(film.SOPInstanceUID, _encoded(film))
        real_predict = worker._predict

        def predict_while_a_copy_arrives(path):
            spool.put(film.SOPInstanceUID, _encoded(_flipped(film)))  # the handler spools a new copy meanwhile
            return real_predict(path)

        worker._predict = predict_while_a_copy_arrives
        assert worker.process(first)
        (copy,) = spool.pending()
        assert copy != first
        worker._predict = real_predict
        assert worker.process(copy)
        assert worker.processed == 2 and not spool.pending()
    finally:
        listener.stop()


def _full_disk(monkeypatch, target: str, times: int) -> dict:
    """Make ``target`` (the row, the results, the outbox link) fail with ENOSPC the first ``times`` calls."""
    from cxrtool.infer.writers import CsvWriter
    from cxrtool.listen.outbox import Outbox
    from cxrtool.results import write

    owner, name = {"row": (CsvWriter, "write"), "results": (write, "_save"), "outbox": (Outbox, "add")}[target]
    real = getattr(owner, name)
    calls = {"failed": 0}

    def full(*args, **kwargs):
        if calls["failed"] < times:
            calls["failed"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, full)
    return calls


@pytest.mark.parametrize("target", ["row", "results", "outbox"])
def test_disk_full_keeps_the_film_spooled_and_a_retry_succeeds(tiny_listen_ckpt, film, tmp_path, monkeypatch, target):
    out = tmp_path / "out"
    calls = _full_disk(monkeypatch, target, times=2)
    send_to = None
    if target == "outbox":
        from cxrtool.listen import parse_destination

        send_to = parse_destination(f"PACS@127.0.0.1:{free_port()}")  # down: only the queueing matters here
    listener = Listener(_config(tiny_listen_ckpt, out, send_to=send_to)).start()
    try:
        assert store_all(listener.port, [film]) == [0]
        assert wait_for(lambda: listener.worker.retries >= 1, timeout=30)
        assert len(listener.spool.pending()) == 1 and not (out / "failed").exists()
        assert wait_for(lambda: listener.worker.processed == 1, timeout=30)
    finally:
        listener.stop()
    assert calls["failed"] == 2 and listener.worker.retries == 2 and listener.worker.failed == 0
    assert not listener.spool.pending() and not (out / "failed").exists()
    rows = _rows(out)
    assert len(rows) == 1 and not rows[0]["error"]  # no torn line, no second row
    assert len(_results(out, "sr")) == 1


def test_output_locked_by_another_run_is_transient(tiny_listen_ckpt, film, tmp_path):
    from cxrtool.locks import owned_output

    out = tmp_path / "out"
    listener = Listener(_config(tiny_listen_ckpt, out)).start()
    try:
        with owned_output(out / "predictions.csv"):  # e.g. a `predict --resume` on the listener's file
            assert store_all(listener.port, [film]) == [0]
            assert wait_for(lambda: listener.worker.retries >= 1, timeout=30)
            assert listener.worker.processed == 0 and len(listener.spool.pending()) == 1
        assert wait_for(lambda: listener.worker.processed == 1, timeout=30)
    finally:
        listener.stop()
    assert listener.worker.failed == 0 and not (out / "failed").exists()


def test_stale_temp_files_are_removed_at_start(tiny_listen_ckpt, tmp_path):
    out = tmp_path / "out"
    spool = Spool(out / "spool")
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = spool.folder / f".abc.{gone.pid}-k3j2h1g0.tmp.dcm"  # atomic_path's name, of a writer that died
    live = spool.folder / f".def.{os.getpid()}-k3j2h1g0.tmp.dcm"  # a write in progress: left alone
    older = spool.folder / f".3d628341b66b34030c29.dcm.{gone.pid}.tmp"  # what earlier versions' spool wrote
    for f in (stale, live, older):
        f.write_bytes(b"\0" * 4096)
    listener = Listener(_config(tiny_listen_ckpt, out))
    listener.stop()
    assert not stale.exists() and not older.exists() and live.exists() and listener.stale_removed == 2


def test_retry_failed_moves_failed_films_back(tiny_listen_ckpt, film, tmp_path):
    out = tmp_path / "out"
    spool = Spool(out / "spool")
    kept = spool.fail(spool.put(film.SOPInstanceUID, _encoded(film)), "an earlier failure")
    assert (kept.parent / f"{kept.name}.reason.txt").read_text() == "an earlier failure\n"

    plain = Listener(_config(tiny_listen_ckpt, out)).start()
    plain.stop()
    assert kept.exists() and plain.retried == 0 and plain.worker.processed == 0  # only on request

    listener = Listener(_config(tiny_listen_ckpt, out, retry_failed=True)).start()
    try:
        assert listener.retried == 1
        assert wait_for(lambda: listener.worker.processed == 1, timeout=30)
    finally:
        listener.stop()
    assert not list((out / "failed").iterdir()) and len(_results(out, "sr")) == 1


def test_second_listener_on_the_same_folder_refuses(tiny_listen_ckpt, tmp_path):
    from cxrtool.locks import OutputBusy

    first = Listener(_config(tiny_listen_ckpt, tmp_path / "out"))
    try:
        with pytest.raises(OutputBusy):
            Listener(_config(tiny_listen_ckpt, tmp_path / "out"))
    finally:
        first.stop()
    Listener(_config(tiny_listen_ckpt, tmp_path / "out")).stop()  # released at stop


@pytest.mark.slow
def test_real_full_disk(tiny_listen_ckpt, film, tmp_path):
    """A real tmpfs filled up: the film waits in the spool and is analysed once space is freed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True, check=False).returncode != 0:
        pytest.skip("needs root and permission to mount a small tmpfs")
    try:
        out = mnt / "out"
        listener = Listener(_config(tiny_listen_ckpt, out))
        listener.spool.put(film.SOPInstanceUID, _encoded(film))
        filler = mnt / "filler"
        with open(filler, "wb") as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        listener.start()
        try:
            assert wait_for(lambda: listener.worker.retries >= 1, timeout=30)
            assert len(listener.spool.pending()) == 1 and not (out / "failed").exists()
            filler.unlink()  # the admin frees space
            assert wait_for(lambda: listener.worker.processed == 1, timeout=60)
        finally:
            listener.stop()
        assert len(_results(out, "sr")) == 1 and len(_rows(out)) == 1 and listener.worker.failed == 0
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_result_uids_follow_the_content(film, tmp_path):
    """``content_key`` changes the result UIDs and names; without one they are what predict/explain always wrote."""
    from cxrtool.results.layout import result_ids, result_paths, stable_uid

    plain = result_ids(film, "m@1", "sr")
    assert plain.sop_uid == stable_uid("instance", "sr", film.SOPInstanceUID, "m@1")  # unchanged for predict/explain
    assert result_ids(film, "m@1", "sr", "aaaa") == result_ids(film, "m@1", "sr", "aaaa")
    other = result_ids(film, "m@1", "sr", "bbbb").sop_uid
    assert result_ids(film, "m@1", "sr", "aaaa").sop_uid not in {plain.sop_uid, other}
    assert result_ids(film, "m@1", "sr", "aaaa").series_uid == plain.series_uid  # one results series per study
    paths = [result_paths(tmp_path, "f.dcm", film, "m@1", key)["sr"] for key in ("", "aaaa", "bbbb")]
    assert len(set(paths)) == 3 and paths[0] == result_paths(tmp_path, "f.dcm", film, "m@1")["sr"]
