"""predict against a real Orthanc + DICOMweb plugin: QIDO/WADO in, STOW out, into the same study."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pydicom
import pytest
from dicomweb_helpers import CLASSES, Proxy, study_of_copies
from highdicom.sr import Comprehensive3DSR
from highdicom.sr.utils import find_content_items
from typer.testing import CliRunner

from cxrtool.modelfile.loaded import open_model

pytestmark = [pytest.mark.pacs, pytest.mark.filterwarnings("ignore::UserWarning")]


def _client(orthanc):
    from dicomweb_client import DICOMwebClient

    return DICOMwebClient(orthanc.dicomweb.removeprefix("dicomweb+"))


def _sr_numbers(sr) -> list[float]:
    return [
        float(i.MeasuredValueSequence[0].NumericValue)
        for i in find_content_items(sr, value_type="NUM", recursive=True)
        if i.ConceptNameCodeSequence[0].CodingSchemeDesignator == "99CXRTOOL"
    ]


def _results_in_study(client, study: str) -> dict[str, list]:
    """``{modality: [instance, ...]}`` of the study's cxrtool result series (found by QIDO-RS, fetched by WADO-RS)."""
    from cxrtool.results.layout import SERIES_DESCRIPTION

    found: dict[str, list] = {}
    for series in client.search_for_series(study, fields=["SeriesDescription"]):
        ds = pydicom.Dataset.from_json(series)
        if ds.get("SeriesDescription") not in SERIES_DESCRIPTION.values():
            continue
        for inst in client.search_for_instances(study, ds.SeriesInstanceUID):
            sop = pydicom.Dataset.from_json(inst).SOPInstanceUID
            found.setdefault(ds.Modality, []).append(client.retrieve_instance(study, ds.SeriesInstanceUID, sop))
    return found


def _predict(args, env=None):
    from cxrtool.cli.main import app

    return CliRunner().invoke(app, ["predict", *args], env=env)


def _predicted_study(orthanc, ckpt, chest_films, tmp_path) -> tuple[str, Path]:
    """A study of two uploaded film copies and its predictions CSV (torch, decoded inline): what a STOW test stores."""
    study, films = study_of_copies(chest_films, 2, tmp_path / "films")
    orthanc.upload(films)
    out = tmp_path / "p.csv"
    res = _predict(
        [f"{orthanc.dicomweb}/studies/{study}", "-m", str(ckpt), "-o", str(out), "--backend", "torch", "--workers", "0"]
    )
    assert res.exit_code == 0, res.output
    return study, out


def test_predict_study_round_trip(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    study, films = study_of_copies(chest_films, 3, tmp_path / "films")
    uploaded = orthanc.upload(films)
    assert len({u["ID"] for u in uploaded}) == 3 and len({u["ParentStudy"] for u in uploaded}) == 1
    address = f"{orthanc.dicomweb}/studies/{study}"
    out = tmp_path / "p.csv"

    start = time.perf_counter()
    res = _predict(
        [
            address,
            "-m",
            str(tiny_web_ckpt),
            "-o",
            str(out),
            "--backend",
            "torch",
            "--workers",
            "1",
            "--dicom-out",
            orthanc.dicomweb,
        ]
    )
    seconds = time.perf_counter() - start
    assert res.exit_code == 0, res.output
    print(f"\nDICOMweb round trip (QIDO + WADO + predict + SR/SC + STOW): {seconds / len(films):.2f} s per film")

    rows = list(csv.DictReader(out.open()))
    sops = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in films}
    assert {r["path"].rsplit("/instances/", 1)[1] for r in rows} == sops  # rows named by instance address (UIDs)
    assert all(r["path"].startswith(address + "/series/") and not r["error"] for r in rows)
    assert "3 stored" in res.output

    client = _client(orthanc)
    results = _results_in_study(client, study)
    assert sorted(results) == ["OT", "SR"] and len(results["SR"]) == 3 and len(results["OT"]) == 3
    by_source = {
        str(
            sr.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID
        ): sr
        for sr in results["SR"]
    }
    for row in rows:
        sr = Comprehensive3DSR.from_dataset(by_source[row["path"].rsplit("/", 1)[1]])
        assert _sr_numbers(sr)[:3] == pytest.approx([float(row[f"p:{c}"]) for c in CLASSES], abs=1e-6)
    assert len(orthanc.call("GET", "/studies")) == 1  # everything went into the source study

    # a rerun with --resume predicts nothing new and stores nothing again: the journal has every film acknowledged
    res = _predict(
        [
            address,
            "-m",
            str(tiny_web_ckpt),
            "-o",
            str(out),
            "--backend",
            "torch",
            "--workers",
            "0",
            "--resume",
            "--dicom-out",
            orthanc.dicomweb,
        ]
    )
    assert res.exit_code == 0, res.output
    assert "(STOW-RS): nothing to store" in res.output
    assert len(list(csv.DictReader(out.open()))) == 3
    assert sum(len(v) for v in _results_in_study(client, study).values()) == 6


def test_stow_retries_503_and_every_object_arrives_once(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    """The first STOW requests get 503: cxrtool backs off and retries; each SR/SC is stored exactly once."""
    from cxrtool.dicomweb import parse_dicomweb_url
    from cxrtool.dicomweb.destination import StowDestination
    from cxrtool.dicomweb.results import store_results

    study, out = _predicted_study(orthanc, tiny_web_ckpt, chest_films, tmp_path)
    proxy = Proxy(orthanc.port, fail_posts=3).start()
    waits: list[float] = []
    try:
        destination = StowDestination(
            parse_dicomweb_url(proxy.dicomweb), attempts=5, first_backoff=0.05, sleep=waits.append
        )
        results = store_results(out, destination, model=open_model(tiny_web_ckpt))
    finally:
        proxy.stop()
    assert [r.status for r in results] == ["stored", "stored"] and all(r.objects == 2 for r in results)
    posts = [status for method, _, status in proxy.requests if method == "POST"]
    assert posts == [503, 503, 503, 200, 200]  # film 1: three refusals then stored; film 2: at once
    assert waits == [0.05, 0.1, 0.2]  # exponential backoff between the tries
    found = _results_in_study(_client(orthanc), study)
    assert len(found["SR"]) == 2 and len(found["OT"]) == 2  # nothing twice, nothing missing
    assert len({ds.SOPInstanceUID for v in found.values() for ds in v}) == 4


def test_stow_that_keeps_failing_is_reported_per_film(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    """A server that never accepts: each film is reported failed with the HTTP reason, nothing half-stored."""
    from cxrtool.dicomweb import parse_dicomweb_url
    from cxrtool.dicomweb.destination import StowDestination
    from cxrtool.dicomweb.results import store_results

    study, out = _predicted_study(orthanc, tiny_web_ckpt, chest_films, tmp_path)
    proxy = Proxy(orthanc.port, fail_posts=1000).start()
    try:
        destination = StowDestination(
            parse_dicomweb_url(proxy.dicomweb), attempts=3, first_backoff=0.01, sleep=lambda s: None
        )
        results = store_results(out, destination, model=open_model(tiny_web_ckpt))
    finally:
        proxy.stop()
    assert [r.status for r in results] == ["failed", "failed"]
    assert all("HTTP 503" in r.reason and r.objects == 0 for r in results)
    assert sum(method == "POST" for method, _, _ in proxy.requests) == 6  # 3 tries per film
    assert _results_in_study(_client(orthanc), study) == {}


def test_bearer_token_is_sent_and_never_shown(orthanc, tiny_web_ckpt, chest_films, tmp_path, caplog):
    """A token from --token-env reaches the server on every request, and appears in no output, log, row or object."""
    import logging

    token = "tok-" + "x7Qe9" * 8
    study, films = study_of_copies(chest_films, 2, tmp_path / "films")
    orthanc.upload(films)
    proxy = Proxy(orthanc.port, token=token).start()
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "p.jsonl"
    try:
        res = _predict(
            [
                f"{proxy.dicomweb}/studies/{study}",
                "-m",
                str(tiny_web_ckpt),
                "-o",
                str(out),
                "--backend",
                "torch",
                "--workers",
                "1",
                "--token-env",
                "CXR_TEST_TOKEN",
                "--dicom-out",
                proxy.dicomweb,
            ],
            env={"CXR_TEST_TOKEN": token},
        )
        sent = set(proxy.authorizations)
        wrong = _predict(
            [
                f"{proxy.dicomweb}/studies/{study}",
                "-m",
                str(tiny_web_ckpt),
                "-o",
                str(tmp_path / "w.csv"),
                "--backend",
                "torch",
                "--workers",
                "0",
                "--token-env",
                "CXR_TEST_TOKEN",
            ],
            env={"CXR_TEST_TOKEN": "nope"},
        )
    finally:
        proxy.stop()
    assert res.exit_code == 0, res.output
    assert sent == {f"Bearer {token}"}  # every request of the run carried it
    assert wrong.exit_code == 2 and "HTTP 401" in wrong.output  # the listing itself is refused: a clear one-line error
    texts = [res.output, wrong.output, caplog.text, out.read_text()]
    texts += [p.read_bytes().decode("latin-1") for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".dcm"]
    found = _results_in_study(_client(orthanc), study)
    texts += [str(ds) for v in found.values() for ds in v]
    assert len(found["SR"]) == 2
    assert not [t for t in texts if token in t or token[4:20] in t]


def test_stow_destination_as_listen_sender(orthanc, chest_films, tmp_path):
    """``listen --send-to dicomweb+…``'s sender: one try per call, outcomes read as accepted or not, no secret."""
    from cxrtool.dicomweb.connection import ConnectionOptions
    from cxrtool.dicomweb.destination import StowDestination

    _, films = study_of_copies(chest_films, 2, tmp_path / "films")
    proxy = Proxy(orthanc.port, fail_posts=1).start()
    try:
        (tmp_path / "auth").write_text("user:pw-not-needed\n")
        sender = StowDestination.from_address(
            proxy.dicomweb, ConnectionOptions(basic_auth_file=tmp_path / "auth"), attempts=1
        )
        first = sender.send(films)
        second = sender.send(films)
    finally:
        proxy.stop()
    assert [bool(o) for o in first] == [False, False] and "HTTP 503" in first[0].reason
    assert all(second) and [o.path for o in second] == films
    assert sender.describe() == proxy.dicomweb and "pw-not-needed" not in repr(sender)
    assert len(orthanc.call("GET", "/instances")) == 2
