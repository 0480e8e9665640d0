"""predict against a real Orthanc + DICOMweb plugin: QIDO/WADO in, STOW out, into the same study."""

from __future__ import annotations

import csv
import time

import pydicom
import pytest
from highdicom.sr import Comprehensive3DSR
from highdicom.sr.utils import find_content_items
from typer.testing import CliRunner

from dicomweb_helpers import CLASSES, study_of_copies

pytestmark = [pytest.mark.pacs, pytest.mark.filterwarnings("ignore::UserWarning")]


def _client(orthanc):
    from dicomweb_client import DICOMwebClient

    return DICOMwebClient(orthanc.dicomweb.removeprefix("dicomweb+"))


def _sr_numbers(sr) -> list[float]:
    return [float(i.MeasuredValueSequence[0].NumericValue) for i in find_content_items(sr, value_type="NUM", recursive=True)
            if i.ConceptNameCodeSequence[0].CodingSchemeDesignator == "99CXRTOOL"]


def _results_in_study(client, study: str) -> dict[str, list]:
    """``{modality: [instance, ...]}`` of the study's cxrtool result series, found with QIDO-RS, fetched with WADO-RS."""
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


def test_predict_study_round_trip(orthanc, tiny_web_ckpt, chest_films, tmp_path):
    study, films = study_of_copies(chest_films, 3, tmp_path / "films")
    uploaded = orthanc.upload(films)
    assert len({u["ID"] for u in uploaded}) == 3 and len({u["ParentStudy"] for u in uploaded}) == 1
    address = f"{orthanc.dicomweb}/studies/{study}"
    out = tmp_path / "p.csv"

    start = time.perf_counter()
    res = _predict([address, "-m", str(tiny_web_ckpt), "-o", str(out), "--backend", "torch", "--workers", "1",
                    "--dicom-out", orthanc.dicomweb])
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
    by_source = {str(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                     .ReferencedSOPSequence[0].ReferencedSOPInstanceUID): sr for sr in results["SR"]}
    for row in rows:
        sr = Comprehensive3DSR.from_dataset(by_source[row["path"].rsplit("/", 1)[1]])
        assert _sr_numbers(sr)[:3] == pytest.approx([float(row[f"p:{c}"]) for c in CLASSES], abs=1e-6)
    assert len(orthanc.call("GET", "/studies")) == 1  # everything went into the source study

    # a rerun with --resume predicts nothing new; storing again replaces (stable UIDs), never duplicates
    res = _predict([address, "-m", str(tiny_web_ckpt), "-o", str(out), "--backend", "torch", "--workers", "0",
                    "--resume", "--dicom-out", orthanc.dicomweb])
    assert res.exit_code == 0, res.output
    assert len(list(csv.DictReader(out.open()))) == 3
    assert sum(len(v) for v in _results_in_study(client, study).values()) == 6
