"""explain against a real Orthanc + DICOMweb plugin: a study in, heatmaps out, SR + SC STOWed back from one fetch."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import pydicom
import pytest
from dicomweb_helpers import CLASSES, Proxy, study_of_copies
from highdicom.sr import Comprehensive3DSR
from test_orthanc_dicomweb import _client, _results_in_study, _sr_numbers
from typer.testing import CliRunner

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning")]

PHI = ("Test^Patient", "Test", "Patient", "cxrtool-test", "film0")  # what study_of_copies puts in / names its files


def _explain(args, env=None):
    from cxrtool.cli.main import app

    return CliRunner().invoke(app, ["explain", *args], env=env)


def _sops(files) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def _wado_gets(proxy: Proxy, sop: str) -> int:
    """WADO-RS retrieves of one instance seen by the proxy (QIDO searches end in ``/instances``, not the UID)."""
    return sum(m == "GET" and p.split("?")[0].endswith(f"/instances/{sop}") for m, p, _ in proxy.requests)


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch):
    """The process's temporary folder, watched: fetched copies must be gone when explain is done with them."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.pacs
def test_explain_a_study_one_row_per_instance_named_by_uids(orthanc, tiny_web_ckpt, chest_films, tmp_path, private_tmp):
    study, films = study_of_copies(chest_films, 3, tmp_path / "films")
    orthanc.upload(films)
    address = f"{orthanc.dicomweb}/studies/{study}"
    out = tmp_path / "explained"
    res = _explain([address, "-m", str(tiny_web_ckpt), "-o", str(out), "--device", "cpu", "-b", "2"])
    assert res.exit_code == 0, res.output

    rows = list(csv.DictReader((out / "explain.csv").open()))
    assert len(rows) == 3 and not any(r["error"] for r in rows)
    assert {r["path"].rsplit("/instances/", 1)[1] for r in rows} == _sops(films)  # one row per image instance
    assert all(r["path"].startswith(address + "/series/") for r in rows)  # named by its DICOMweb address
    for r in rows:
        sop = r["path"].rsplit("/", 1)[1]
        for kind in ("heatmap", "overlay", "panel"):
            written = Path(r[kind])
            assert written.is_file() and written.name.startswith(f"{sop}.{r['target']}.")  # named by the UID
    names = [p.name for p in out.rglob("*")]
    text = (out / "explain.csv").read_text()
    assert not [t for t in PHI if t in text or any(t in n for n in names)]  # no PHI in a file name or the CSV
    assert list(private_tmp.iterdir()) == []  # every fetched copy removed


@pytest.mark.pacs
def test_explain_dicom_out_stows_sr_and_sc_into_the_study(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    study, films = study_of_copies(chest_films, 3, tmp_path / "films")
    orthanc.upload(films)
    out = tmp_path / "explained"
    res = _explain(
        [
            f"{orthanc.dicomweb}/studies/{study}",
            "-m",
            str(tiny_web_ckpt),
            "-o",
            str(out),
            "--device",
            "cpu",
            "--target",
            "all",  # a row per class: the CSV holds every probability the SR must carry
            "--dicom-out",
            orthanc.dicomweb,
        ]
    )
    assert res.exit_code == 0, res.output
    assert "3 stored" in res.output

    rows = list(csv.DictReader((out / "explain.csv").open()))
    probs: dict[str, dict[str, float]] = {}
    for r in rows:
        probs.setdefault(r["path"].rsplit("/", 1)[1], {})[r["target"]] = float(r["target_prob"])
    assert set(probs) == _sops(films) and all(set(p) == set(CLASSES) for p in probs.values())

    found = _results_in_study(_client(orthanc), study)  # QIDO-RS in the source study
    assert sorted(found) == ["OT", "SR"] and len(found["SR"]) == 3 and len(found["OT"]) == 3
    for sr in found["SR"]:
        source = str(
            sr.CurrentRequestedProcedureEvidenceSequence[0]
            .ReferencedSeriesSequence[0]
            .ReferencedSOPSequence[0]
            .ReferencedSOPInstanceUID
        )
        numbers = _sr_numbers(Comprehensive3DSR.from_dataset(sr))[:3]
        assert numbers == pytest.approx([probs[source][c] for c in CLASSES], rel=1e-5, abs=1e-6)
    assert len(orthanc.call("GET", "/studies")) == 1  # nothing went anywhere but the source study


@pytest.mark.pacs
def test_each_instance_is_fetched_once_for_heatmaps_and_results(
    orthanc, tiny_web_ckpt, chest_films, tmp_path, private_tmp
):
    """Explain and its STOWed SR + SC read the same WADO-RS copy: one GET per instance, one STOW per film.

    The films are found by a QIDO-RS study query (``--dicomweb`` + ``--qido``), the other way in.
    """
    study, films = study_of_copies(chest_films, 4, tmp_path / "films")
    orthanc.upload(films)
    proxy = Proxy(orthanc.port).start()
    try:
        res = _explain(
            [
                "--dicomweb",
                proxy.dicomweb,
                "--qido",
                "ModalitiesInStudy=CR&PatientID=cxrtool-test",
                "-m",
                str(tiny_web_ckpt),
                "-o",
                str(tmp_path / "explained"),
                "--device",
                "cpu",
                "-b",
                "3",
                "--dicom-out",
                proxy.dicomweb,
            ]
        )
    finally:
        proxy.stop()
    assert res.exit_code == 0, res.output
    assert any(m == "GET" and p.split("?")[0].endswith("/dicom-web/studies") for m, p, _ in proxy.requests)
    assert {sop: _wado_gets(proxy, sop) for sop in _sops(films)} == {sop: 1 for sop in _sops(films)}
    assert [s for m, _, s in proxy.requests if m == "POST"] == [200] * 4
    assert len(_results_in_study(_client(orthanc), study)["SR"]) == 4
    assert list(private_tmp.iterdir()) == []


@pytest.mark.pacs
def test_streamed_a_batch_at_a_time_and_copies_removed_per_film(
    orthanc, tiny_web_ckpt, chest_films, tmp_path, private_tmp
):
    """The first film is explained before the last instance is fetched, and no earlier film's copy lingers."""
    from cxrtool.dicomweb import parse_dicomweb_url
    from cxrtool.dicomweb.explain import FetchedFilms, explain_plan
    from cxrtool.dicomweb.source import DicomwebSource
    from cxrtool.explain.attribution import explain_files
    from cxrtool.explain.options import ExplainOptions
    from cxrtool.modelfile.loaded import open_model
    from cxrtool.models.checkpoint import model_from_loaded

    study, films = study_of_copies(chest_films, 4, tmp_path / "films")
    orthanc.upload(films)
    proxy = Proxy(orthanc.port).start()
    seen: list[tuple[int, list[str]]] = []  # (instances fetched, copies on disk) as each film is done

    def on_file(name: str, error: str | None) -> None:
        assert error is None, error
        fetched = sum(m == "GET" and p.split("?")[0].rsplit("/", 2)[-2] == "instances" for m, p, _ in proxy.requests)
        seen.append((fetched, [p.name for p in private_tmp.iterdir()]))

    loaded = open_model(tiny_web_ckpt)
    source = DicomwebSource(parse_dicomweb_url(f"{proxy.dicomweb}/studies/{study}"), page_size=2)
    try:
        report = explain_files(
            explain_plan(source),
            model_from_loaded(loaded),
            loaded.card,
            tmp_path / "explained",
            ExplainOptions(batch_size=1, device="cpu"),
            on_file=on_file,
            films=FetchedFilms(source),
        )
    finally:
        proxy.stop()
    assert len(report.rows) == 4 and report.n_failed == 0
    assert [f for f, _ in seen] == [1, 2, 3, 4]  # one instance fetched per batch of one, never the study first
    assert all(copies == [] for _, copies in seen)  # each copy removed as soon as its film was done


@pytest.mark.pacs
def test_local_dicom_files_stowed_in_place(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    """Local DICOM inputs with --dicom-out dicomweb+…: read where they lie, SR + SC STOWed into their own study."""
    study, films = study_of_copies(chest_films, 2, tmp_path / "films")
    res = _explain(
        [
            *map(str, films),
            "-m",
            str(tiny_web_ckpt),
            "-o",
            str(tmp_path / "explained"),
            "--device",
            "cpu",
            "--dicom-out",
            orthanc.dicomweb,
        ]
    )
    assert res.exit_code == 0, res.output
    found = _results_in_study(_client(orthanc), study)
    assert len(found["SR"]) == 2 and len(found["OT"]) == 2
    rows = list(csv.DictReader((tmp_path / "explained" / "explain.csv").open()))
    assert sorted(r["path"] for r in rows) == sorted(map(str, films))


@pytest.mark.parametrize(
    "args, message",
    [
        (["dicomweb+http://127.0.0.1:9/dicom-web/studies/1.2", "--dicom-out", "{tmp}/results"], "back over DICOMweb"),
        (["--qido", "StudyDate=2026"], "--dicomweb and --qido go together"),
        (["dicomweb+http://127.0.0.1:9/dicom-web/studies/1.2", "{tmp}/film.png"], "either files or DICOMweb"),
    ],
)
def test_usage_errors_before_any_work(tmp_path, args, message):
    """Exit 2 and one line naming the problem, before the model is read (it does not even exist)."""
    args = [a.format(tmp=tmp_path) for a in args]
    res = _explain([*args, "-m", str(tmp_path / "m.safetensors"), "-o", str(tmp_path / "out")])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and message in lines[0], res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output folder, no results folder
