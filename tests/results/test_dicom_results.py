"""SR + SC for real films: validated by dciodvfy, read back by pydicom/highdicom with the values written."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom.sr import Comprehensive3DSR
from highdicom.sr.utils import find_content_items
from typer.testing import CliRunner

from cxrtool.dicom.read import read_dataset
from cxrtool.modelfile.loaded import open_model
from cxrtool.results import FilmPrediction, ModelInfo, results_for_explain, write_dicom_results
from cxrtool.results.sc import relevance_on_film

CLASSES = ["covid", "normal", "viral_pneumonia"]  # the tiny checkpoint's (conftest.py)
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # highdicom warns about one-component patient names

#: fast subset: no file meta (ACR-NEMA), a DX film labelled CT in a Secondary Capture, a 16x16 rescaled CR
#: (JPEG baseline is in the Orthanc round trip, all 17 fixtures in the slow test)
FAST = ["chest/CR-MONO1-10-chest.dcm", "chest/udacity_nih_test5.dcm", "nonchest/pydicom_dicomdirtests_CR1_6154.dcm"]
MODEL = ModelInfo(model_id="tiny@0123456789ab", backend="torch", calibrated=True)


def _nums(sr) -> dict[str, float]:
    return {
        i.ConceptNameCodeSequence[0].CodeMeaning: float(i.MeasuredValueSequence[0].NumericValue)
        for i in find_content_items(sr, value_type="NUM", recursive=True)
        if i.ConceptNameCodeSequence[0].CodingSchemeDesignator == "99CXRTOOL"
    }


def _codes(sr) -> dict[str, str]:
    return {
        i.ConceptNameCodeSequence[0].CodeMeaning: i.ConceptCodeSequence[0].CodeMeaning
        for i in find_content_items(sr, value_type="CODE", recursive=True)
    }


def _check_valid(path, source, dciodvfy) -> list[str]:
    """dciodvfy errors of ours: none. A source with an invalid UID of its own is named, never repeated silently."""
    errors, warnings = dciodvfy(path)
    uid = str(source.SOPInstanceUID)
    ours = [e for e in errors if uid not in e and "invalid data values" not in e]
    assert ours == [], ours
    if errors:  # only CR-ModalitySequenceLUT: its SOP Instance UID "999.999.01..." breaks the UI rules
        assert not pydicom.uid.UID(uid).is_valid
    return warnings


def results_for_files(files, ckpt, out):
    """What ``explain --dicom-out`` does: explain the films, then SR + SC from explain's own rows and heatmaps."""
    from cxrtool.explain.attribution import explain_files, plan_inputs
    from cxrtool.explain.options import ExplainOptions
    from cxrtool.models.checkpoint import model_from_loaded
    from cxrtool.trust import load_trust

    loaded = open_model(ckpt)
    report = explain_files(
        plan_inputs(files),
        model_from_loaded(loaded),
        loaded.card,
        out.parent / f"{out.name}-explain",
        trust=load_trust(loaded),
    )
    return results_for_explain(report.rows, out, model=loaded, composite=ExplainOptions().composite)


def _write_all(files, ckpt, out, dciodvfy):
    results = results_for_files(files, ckpt, out)
    explained = {r["path"]: r for r in csv.DictReader(open(out.parent / f"{out.name}-explain" / "explain.csv"))}
    warnings: set[str] = set()
    for f, r in zip(files, results):
        assert r.status == "written", r
        source = read_dataset(f, stop_before_pixels=True)
        sr, sc = pydicom.dcmread(r.sr), pydicom.dcmread(r.sc)
        for ds in (sr, sc):
            warnings |= set(_check_valid(r.sr if ds is sr else r.sc, source, dciodvfy))
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert ds.PatientID == source.get("PatientID", "")
            assert ds.SeriesInstanceUID != source.SeriesInstanceUID and "NOT FOR CLINICAL USE" in ds.SeriesDescription
        row = explained[str(f)]
        report = Comprehensive3DSR.from_dataset(sr)
        assert _nums(report)[f"Probability of {row['predicted']}"] == pytest.approx(
            float(row["predicted_prob"]), abs=1e-6
        )
        assert (
            _codes(report)["Finding"]
            == {"covid": "COVID-19", "normal": "Normal", "viral_pneumonia": "Viral pneumonia"}[row["predicted"]]
        )
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert evidence.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sc.BurnedInAnnotation == "YES" and sc.SamplesPerPixel == 3 and sc.pixel_array.shape[2] == 3
    return results, warnings


def test_sr_and_sc_for_real_films(shared_data, tiny_results_ckpt, tmp_path, dciodvfy):
    files = [shared_data / "dicom" / f for f in FAST]
    results, _ = _write_all(files, tiny_results_ckpt, tmp_path / "out", dciodvfy)
    assert len(results) == 3


@pytest.mark.slow
def test_every_dicom_fixture(shared_data, tiny_results_ckpt, tmp_path, dciodvfy):
    """All 17 fixture DICOMs, chest and non-chest (~25 s on 2 cores: J2K decoding of the 2k films)."""
    files = sorted((shared_data / "dicom").glob("*/*.dcm"))
    results, warnings = _write_all(files, tiny_results_ckpt, tmp_path / "out", dciodvfy)
    assert len(results) == 17
    print(f"\n{2 * len(results)} objects; distinct dciodvfy warnings:", *sorted(warnings), sep="\n")


def test_trust_items_written_when_present_and_omitted_otherwise(shared_data, tmp_path, dciodvfy):
    film = shared_data / "dicom" / "chest" / "udacity_nih_test1.dcm"
    flagged = FilmPrediction.from_probs(
        [0.1, 0.2, 0.7], CLASSES, "viral_pneumonia", ood_score=12.5, flag="out_of_distribution"
    )
    plain = FilmPrediction.from_probs([0.1, 0.2, 0.7], CLASSES, "viral_pneumonia")
    (with_trust,) = write_dicom_results(film, flagged, None, tmp_path / "a", MODEL)
    (without,) = write_dicom_results(film, plain, None, tmp_path / "b", MODEL)
    a, b = (Comprehensive3DSR.from_dataset(pydicom.dcmread(p)) for p in (with_trust, without))
    assert _nums(a)["Out-of-distribution score"] == pytest.approx(12.5)
    assert _codes(a)["Input check"] == "out_of_distribution"
    assert "Out-of-distribution score" not in _nums(b) and "Input check" not in _codes(b)
    params = [
        i.TextValue
        for i in find_content_items(a, value_type="TEXT", recursive=True)
        if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"
    ]
    assert params == ["model=tiny@0123456789ab", "backend=torch", "calibrated=yes"]
    for p in (with_trust, without):
        errors, _ = dciodvfy(p)
        assert errors == []


def test_rerun_keeps_objects_and_uids(shared_data, tiny_results_ckpt, tmp_path):
    film = shared_data / "dicom" / "chest" / "CR-MONO1-10-chest.dcm"
    first = results_for_files([film], tiny_results_ckpt, tmp_path / "out")
    uids = [pydicom.dcmread(p).SOPInstanceUID for p in (first[0].sr, first[0].sc)]
    mtimes = [tmp_path.joinpath(p).stat().st_mtime_ns for p in (first[0].sr, first[0].sc)]
    again = results_for_files([film], tiny_results_ckpt, tmp_path / "out")
    assert again[0].status == "exists"
    assert [pydicom.dcmread(p).SOPInstanceUID for p in (again[0].sr, again[0].sc)] == uids
    assert [tmp_path.joinpath(p).stat().st_mtime_ns for p in (again[0].sr, again[0].sc)] == mtimes
    other = tmp_path / "copy_of_film.dcm"  # another file of the same film: same UIDs, its own name
    shutil.copyfile(film, other)
    assert (
        pydicom.dcmread(results_for_files([other], tiny_results_ckpt, tmp_path / "out")[0].sr).SOPInstanceUID == uids[0]
    )


def test_relevance_goes_back_to_the_film_geometry():
    rel = np.zeros((8, 8), np.float32)
    rel[4, :] = 1.0  # one row of the model input
    stretched = relevance_on_film(rel, (16, 32), "stretch")
    assert stretched.shape == (16, 32) and stretched[8:10].mean() > stretched[:4].mean()
    # letterbox: a 16x32 film fills rows 2..5 of the 8x8 input, so input row 4 lands on film rows 8-11
    boxed = relevance_on_film(rel, (16, 32), "letterbox")
    assert boxed[9].mean() > 0.5 and boxed[0].max() == 0.0 and boxed[15].max() < 0.5


def test_cli_predict_and_explain_dicom_out(shared_data, tiny_results_ckpt, tmp_path):
    from cxrtool.cli.main import app

    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copyfile(shared_data / "dicom" / "chest" / "udacity_nih_test1.dcm", folder / "film.dcm")
    png = next((shared_data / "covid3_256" / "normal").glob("*.png"))
    shutil.copyfile(png, folder / "image.png")
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "predict",
            str(folder),
            "-m",
            str(tiny_results_ckpt),
            "-o",
            str(tmp_path / "p.csv"),
            "--backend",
            "torch",
            "--workers",
            "0",
            "--dicom-out",
            str(tmp_path / "dcm"),
        ],
    )
    assert res.exit_code == 0, res.output
    index = (tmp_path / "dcm" / "dicom_results.csv").read_text()
    assert "not a DICOM file" in index and index.count(",written,") == 1
    assert len(list((tmp_path / "dcm").glob("*.sr.dcm"))) == 1 and len(list((tmp_path / "dcm").glob("*.sc.dcm"))) == 1
    sr = Comprehensive3DSR.from_dataset(pydicom.dcmread(next((tmp_path / "dcm").glob("*.sr.dcm"))))
    row = next(line for line in (tmp_path / "p.csv").read_text().splitlines() if "film.dcm" in line).split(",")
    assert [round(v, 6) for v in _nums(sr).values()][:3] == [float(x) for x in row[2:5]]  # the row's own probabilities

    res = runner.invoke(
        app,
        [
            "explain",
            str(folder),
            "-m",
            str(tiny_results_ckpt),
            "-o",
            str(tmp_path / "ex"),
            "--dicom-out",
            str(tmp_path / "dcm2"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "dcm2").glob("*.sc.dcm"))) == 1


def test_film_without_study_uid_fails_with_its_reason(shared_data, tiny_results_ckpt, tmp_path):
    ds = pydicom.dcmread(shared_data / "dicom" / "nonchest" / "pydicom_dicomdirtests_CR1_6154.dcm")
    del ds.StudyInstanceUID
    film = tmp_path / "no_study.dcm"
    ds.save_as(film)
    (result,) = results_for_files([film], tiny_results_ckpt, tmp_path / "out")
    assert result.status == "failed" and "StudyInstanceUID" in result.reason
    assert not list((tmp_path / "out").glob("*.dcm"))


# --- bad source headers (issue 22): what is valid is still written; what cannot be is a named failure, exit 1 -------


def _film_with(shared_data, tmp_path, name: str, **header) -> "Path":
    ds = pydicom.dcmread(shared_data / "dicom" / "chest" / "udacity_nih_test1.dcm")
    for keyword, value in header.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path)
    return path


@pytest.mark.parametrize(
    "modality", [None, "dx", "DIGITALRADIOGRAPHYX"], ids=["missing", "lower-case", "over 16 characters"]
)
def test_bad_modality_still_gets_a_valid_sr_and_sc(shared_data, tiny_results_ckpt, tmp_path, dciodvfy, modality):
    film = _film_with(shared_data, tmp_path, "film", Modality=modality)
    (result,) = results_for_files([film], tiny_results_ckpt, tmp_path / "out")
    assert result.status == "written", result
    sr, sc = pydicom.dcmread(result.sr), pydicom.dcmread(result.sc)
    assert sr.Modality == "SR" and sc.Modality == "OT"
    source = read_dataset(film, stop_before_pixels=True)
    for path in (result.sr, result.sc):
        _check_valid(path, source, dciodvfy)
    group = Comprehensive3DSR.from_dataset(sr)
    refs = [i for i in find_content_items(group, value_type="IMAGE", recursive=True)]
    assert refs and all(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID for i in refs)


def test_unknown_character_set_is_written_as_utf8(shared_data, tiny_results_ckpt, tmp_path):
    film = _film_with(shared_data, tmp_path, "charset", SpecificCharacterSet="ISO_IR 999")
    (result,) = results_for_files([film], tiny_results_ckpt, tmp_path / "out")
    assert result.status == "written", result
    assert pydicom.dcmread(result.sr).SpecificCharacterSet == "ISO_IR 192"


def test_private_sop_class_is_a_named_failure(shared_data, tiny_results_ckpt, tmp_path):
    film = _film_with(shared_data, tmp_path, "private", SOPClassUID="1.2.3.4")
    (result,) = results_for_files([film], tiny_results_ckpt, tmp_path / "out")
    assert result.status == "failed" and "SOP Class UID 1.2.3.4 is not an image" in result.reason


def test_dicom_result_failures_make_predict_and_explain_exit_1(shared_data, tiny_results_ckpt, tmp_path):
    from cxrtool.cli.main import app

    folder = tmp_path / "in"
    folder.mkdir()
    _film_with(shared_data, folder, "dx", Modality="dx")
    _film_with(shared_data, folder, "no_study", StudyInstanceUID=None)
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "predict",
            str(folder),
            "-m",
            str(tiny_results_ckpt),
            "-o",
            str(tmp_path / "p.csv"),
            "--backend",
            "torch",
            "--workers",
            "0",
            "--dicom-out",
            str(tmp_path / "dcm"),
        ],
    )
    assert res.exit_code == 1, res.output
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(tmp_path / "dcm" / "dicom_results.csv", newline=""))}
    assert rows["dx.dcm"]["status"] == "written" and rows["no_study.dcm"]["status"] == "failed"
    assert "StudyInstanceUID" in rows["no_study.dcm"]["reason"]
    res = runner.invoke(
        app,
        [
            "explain",
            str(folder),
            "-m",
            str(tiny_results_ckpt),
            "-o",
            str(tmp_path / "ex"),
            "--dicom-out",
            str(tmp_path / "dcm2"),
        ],
    )
    assert res.exit_code == 1, res.output

    (folder / "no_study.dcm").unlink()  # control: only the Modality problem left, which is handled -> exit 0
    res = runner.invoke(
        app,
        [
            "predict",
            str(folder),
            "-m",
            str(tiny_results_ckpt),
            "-o",
            str(tmp_path / "p2.csv"),
            "--backend",
            "torch",
            "--workers",
            "0",
            "--dicom-out",
            str(tmp_path / "dcm3"),
        ],
    )
    assert res.exit_code == 0, res.output
