"""predict --dicom-out dicomweb+…: results STOWed per batch from the run's own rows, each film fetched once.

Against the real Orthanc + DICOMweb plugin, through a counting proxy: every instance is retrieved by WADO-RS
exactly once, the run's private folder holds only the films in flight and is gone afterwards, and a crash
between a row and its acknowledgement is made good by ``--resume`` without duplicates.
"""

from __future__ import annotations

import csv
import re
import stat
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from dicomweb_helpers import CLASSES, Proxy, study_of_copies
from highdicom.sr import Comprehensive3DSR
from test_orthanc_dicomweb import _client, _results_in_study, _sr_numbers
from typer.testing import CliRunner

pytestmark = [pytest.mark.pacs, pytest.mark.filterwarnings("ignore::UserWarning")]

WADO_INSTANCE = re.compile(r"/instances/([0-9.]+)$")


def _predict(args):
    from cxrtool.cli.main import app

    return CliRunner().invoke(app, ["predict", *args])


def _args(address: str, ckpt: Path, out: Path, dicom_out: str, *extra: str) -> list[str]:
    return [address, "-m", str(ckpt), "-o", str(out), "--backend", "torch", "--dicom-out", dicom_out, *extra]


def _wado_gets(proxy: Proxy) -> Counter:
    """SOP Instance UID -> WADO-RS retrieves the proxy forwarded (QIDO searches end in /instances, not a UID)."""
    return Counter(m[1] for method, path, _ in proxy.requests if method == "GET" and (m := WADO_INSTANCE.search(path)))


def _sops(files) -> list[str]:
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def _journal(out: Path) -> list[dict]:
    from cxrtool.dicomweb.results import journal_path

    with journal_path(out).open(newline="") as fh:
        return list(csv.DictReader(fh))


def _assert_srs_match_rows(client, study: str, out: Path, films: int) -> None:
    """The study holds one SR and one SC per film, no more, and each SR's probabilities are its CSV row's."""
    found = _results_in_study(client, study)
    assert sorted(found) == ["OT", "SR"] and len(found["SR"]) == films and len(found["OT"]) == films
    by_source = {
        str(
            sr.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID
        ): sr
        for sr in found["SR"]
    }
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == films
    for row in rows:
        sr = Comprehensive3DSR.from_dataset(by_source[row["path"].rsplit("/", 1)[1]])
        assert _sr_numbers(sr)[:3] == pytest.approx([float(row[f"p:{c}"]) for c in CLASSES], abs=1e-6)


def test_each_instance_is_fetched_once_and_results_are_stored_per_batch(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    study, films = study_of_copies(chest_films, 5, tmp_path / "films")
    orthanc.upload(films)
    proxy = Proxy(orthanc.port).start()
    out = tmp_path / "p.csv"
    try:
        res = _predict(
            _args(f"{proxy.dicomweb}/studies/{study}", tiny_web_ckpt, out, proxy.dicomweb, "-b", "2", "--workers", "1")
        )
    finally:
        proxy.stop()
    assert res.exit_code == 0, res.output
    assert "5 stored" in res.output
    assert _wado_gets(proxy) == Counter({sop: 1 for sop in _sops(films)})  # heatmap and SR from the one fetch
    posts = [status for method, _, status in proxy.requests if method == "POST"]
    assert posts == [200, 200, 200]  # one STOW request per batch of 2 (5 films), as the run went
    _assert_srs_match_rows(_client(orthanc), study, out, 5)
    assert [(r["status"], r["objects"], r["destination"]) for r in _journal(out)] == [
        ("stored", "2", proxy.dicomweb)
    ] * 5


def test_run_folder_holds_only_films_in_flight_and_is_removed(
    orthanc, tiny_web_ckpt, chest_films, tmp_path, monkeypatch
):
    """The decode worker keeps each fetched film in a 0700 folder until its results are stored, then it is deleted;
    the folder never holds the whole study and is removed after the run, also one interrupted by Ctrl-C."""
    from cxrtool.dicomweb.results import ResultStower

    study, films = study_of_copies(chest_films, 10, tmp_path / "films")
    orthanc.upload(films)
    seen: list[tuple[Path, int, int]] = []  # (folder, its mode, films kept in it) each time a batch is to be stored
    store = ResultStower.__call__

    def observed(self, rows):
        kept = [p for p in self.folder.iterdir() if p.suffix == ".dcm"]
        seen.append((self.folder, stat.S_IMODE(self.folder.stat().st_mode), len(kept)))
        if interrupt_at and len(seen) == interrupt_at:
            raise KeyboardInterrupt
        return store(self, rows)

    monkeypatch.setattr(ResultStower, "__call__", observed)
    address = f"{orthanc.dicomweb}/studies/{study}"
    interrupt_at = 0
    res = _predict(_args(address, tiny_web_ckpt, tmp_path / "p.csv", orthanc.dicomweb, "-b", "1", "--workers", "1"))
    assert res.exit_code == 0, res.output
    assert len(seen) == 10 and len({folder for folder, _, _ in seen}) == 1
    folder = seen[0][0]
    assert {mode for _, mode, _ in seen} == {0o700}
    in_flight = 2 * 1 + 2 * 1  # PredictOptions.pending_limit for batch 1, 1 worker
    counts = [n for _, _, n in seen]
    assert min(counts) >= 1 and max(counts) <= in_flight + 1  # the batch's own film + those decoded ahead
    assert not folder.exists()
    assert len(_results_in_study(_client(orthanc), study)["SR"]) == 10

    seen.clear()
    interrupt_at = 3
    res = _predict(_args(address, tiny_web_ckpt, tmp_path / "q.csv", orthanc.dicomweb, "-b", "1", "--workers", "1"))
    assert res.exit_code != 0 and len(seen) == 3
    assert seen[0][2] >= 1 and not seen[0][0].exists()  # films were kept, and went with the interrupted run


def test_crash_between_row_and_acknowledgement_is_stored_on_resume(
    orthanc, tiny_web_ckpt, chest_films, tmp_path, monkeypatch
):
    """A run killed after a batch's rows are on disk but before the server acknowledged its objects: ``--resume``
    stores those films first (one extra fetch each, only for them), then predicts the rest; a lost
    acknowledgement (journal gone) stores again without duplicates."""
    from cxrtool.dicomweb.destination import StowDestination
    from cxrtool.dicomweb.results import journal_path

    study, films = study_of_copies(chest_films, 6, tmp_path / "films")
    orthanc.upload(films)
    proxy = Proxy(orthanc.port).start()
    out = tmp_path / "p.csv"
    args = _args(f"{proxy.dicomweb}/studies/{study}", tiny_web_ckpt, out, proxy.dicomweb, "-b", "2", "--workers", "0")
    send = StowDestination.send
    calls = []

    def crash_on_second_batch(self, files):
        calls.append(len(files))
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies with batch 2's rows on disk and its objects never sent
        return send(self, files)

    try:
        with monkeypatch.context() as m:
            m.setattr(StowDestination, "send", crash_on_second_batch)
            crashed = _predict(args)
        assert crashed.exit_code != 0
        rows = [r["path"].rsplit("/", 1)[1] for r in csv.DictReader(out.open())]
        assert len(rows) == 4  # batches 1 and 2 recorded
        assert [r["status"] for r in _journal(out)] == ["stored", "stored"]  # only batch 1 acknowledged
        assert len(_results_in_study(_client(orthanc), study)["SR"]) == 2

        proxy.requests.clear()
        resumed = _predict([*args, "--resume"])
        assert resumed.exit_code == 0, resumed.output
        assert "4 stored" in resumed.output  # batch 2 (recorded, never acknowledged) + the 2 films left
        gets = _wado_gets(proxy)
        assert gets == Counter({sop: 1 for sop in _sops(films) if sop not in rows[:2]})  # batch 1 never again
        _assert_srs_match_rows(_client(orthanc), study, out, 6)
        assert Counter(r["status"] for r in _journal(out)) == {"stored": 6}

        journal_path(out).unlink()  # as if the server acknowledged but the journal line never reached the disk
        again = _predict([*args, "--resume"])
    finally:
        proxy.stop()
    assert again.exit_code == 0, again.output
    assert "6 stored" in again.output
    _assert_srs_match_rows(_client(orthanc), study, out, 6)  # the same UIDs: replaced, not duplicated
    assert len(orthanc.call("GET", "/studies")) == 1 and len(orthanc.call("GET", "/instances")) == 6 + 12


def test_local_films_are_read_in_place_and_non_dicom_is_skipped(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    """Local inputs, DICOMweb output: DICOM files are read where they lie (unchanged), a PNG gets no result."""
    import hashlib

    import numpy as np
    from PIL import Image

    study, films = study_of_copies(chest_films, 2, tmp_path / "in")
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)).save(tmp_path / "in" / "x.png")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "in").iterdir()}
    out = tmp_path / "p.csv"
    res = _predict(_args(str(tmp_path / "in"), tiny_web_ckpt, out, orthanc.dicomweb, "--workers", "0"))
    assert res.exit_code == 0, res.output
    assert "1 skipped, 2 stored" in res.output
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "in").iterdir()} == before
    journal = {Path(r["path"]).name: (r["status"], r["reason"]) for r in _journal(out)}
    assert journal == {
        "film0000.dcm": ("stored", ""),
        "film0001.dcm": ("stored", ""),
        "x.png": ("skipped", "not a DICOM file: no DICOM result"),
    }
    found = _results_in_study(_client(orthanc), study)  # the study exists on the server only through its results
    assert len(found["SR"]) == 2 and len(found["OT"]) == 2
