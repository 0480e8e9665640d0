"""The view check: rules by name, their measurements on real frontal and lateral films, and the flag in every
backend.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from cxrtool.config import PreprocessCfg
from cxrtool.modelfile import ModelCard
from cxrtool.preprocess import load_input
from cxrtool.trust import FLAG_OK, FLAG_OOD, Trust
from cxrtool.trust.gate import HeaderVerdict
from cxrtool.trust.view import (
    RULES,
    MediastinumRule,
    SymmetryRule,
    make_rules,
    standardise,
    view_verdicts,
)

CFG = PreprocessCfg(input_size=64)


def _frontal_phantom(size: int = 64) -> np.ndarray:
    """A bright body, two dark lung fields either side of a bright middle band: a frontal film's layout."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    img = np.full((size, size), 0.8, dtype=np.float32)
    for cx in (0.3, 0.7):
        img[((x - cx) / 0.14) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1] = 0.2
    return img


def _as_input(gray: np.ndarray) -> np.ndarray:
    from cxrtool.preprocess import normalize

    return normalize(gray, CFG)[None]


def test_rules_are_registered_by_name_with_parameters() -> None:
    assert set(RULES) == {"mediastinum", "symmetry"}
    rules = make_rules([{"name": "mediastinum", "min_contrast": 0.5}, {"name": "symmetry"}])
    assert rules == (MediastinumRule(min_contrast=0.5), SymmetryRule())
    with pytest.raises(ValueError, match="unknown view rule 'spine'"):
        make_rules([{"name": "spine"}])


def test_phantoms_frontal_passes_and_one_sided_lung_fails() -> None:
    frontal = _frontal_phantom()
    lateral = frontal.copy()
    lateral[:, :] = 0.8
    y, x = (np.mgrid[0:64, 0:64] + 0.5) / 64
    lateral[((x - 0.45) / 0.25) ** 2 + ((y - 0.45) / 0.3) ** 2 < 1] = 0.2  # one lung field in the middle
    lateral[:, 50:] = 1.0  # the spine at one edge
    assert view_verdicts(np.concatenate([_as_input(frontal), _as_input(lateral)])) == [None, "lateral"]
    # each rule on its own: the middle band is dark, and the film is no longer its own mirror image
    films = np.concatenate([_as_input(frontal), _as_input(lateral)])
    assert list(view_verdicts(films, [MediastinumRule()])) == [None, "lateral"]
    assert MediastinumRule().measure(standardise(films))[0] > 1.0
    # the mirror correlation of a perfectly symmetric film is 1
    assert SymmetryRule().measure(standardise(films))[0] == pytest.approx(1.0, abs=1e-5)


def test_verdicts_do_not_depend_on_normalisation_or_channels() -> None:
    gray = _frontal_phantom()
    gray[:, 28:36] = 0.1  # a dark middle band: fails the mediastinum rule
    one = PreprocessCfg(input_size=64, channels=1, mean=(0.5,), std=(0.25,))
    from cxrtool.preprocess import normalize

    assert view_verdicts(normalize(gray, one)[None]) == view_verdicts(_as_input(gray)) == ["lateral"]


def test_a_non_finite_input_gets_no_verdict() -> None:
    x = _as_input(_frontal_phantom() * 0)
    x[0, 0, 0, 0] = np.nan
    assert view_verdicts(x) == [None]


def _inputs(files: list[Path]) -> np.ndarray:
    return np.stack([load_input(f, CFG) for f in files])


def test_real_laterals_are_flagged_and_frontal_films_pass(shared_data: Path) -> None:
    """Measured, not fitted: the rules' parameters come from frontal films only (docs/trust.md)."""
    laterals = sorted((shared_data / "lateral" / "images").glob("*.png"))
    frontal = sorted((shared_data / "covid3_256").rglob("*.png"))
    assert len(laterals) == 22 and len(frontal) > 300
    lat = view_verdicts(_inputs(laterals))
    front = view_verdicts(_inputs(frontal))
    assert np.mean([v == "lateral" for v in lat]) >= 0.8
    assert np.mean([v is not None for v in front]) <= 0.03


def test_flag_precedence_header_then_view_then_ood() -> None:
    from cxrtool.trust.ood import DepthStats, OodModel

    card = ModelCard(arch="densenet121", task="multiclass", class_names=["a", "b"])
    ood = OodModel([DepthStats("d", 0, 2, np.zeros((1, 2)), np.eye(2))], threshold=0.0)
    trust = Trust(card, 1.0, ood)
    far = np.full((4, 2), 100.0)  # every film above the OOD threshold
    got = trust.assess(
        np.zeros((4, 2)),
        far,
        [HeaderVerdict("body part HAND is not chest", "lateral"), HeaderVerdict(None, "lateral"), None, None],
        [None, None, "lateral", None],
    )
    assert [a.flag for a in got] == ["header:body part HAND is not chest", "view:lateral", "view:lateral", FLAG_OOD]
    assert trust.assess(np.zeros((1, 2)), np.zeros((1, 2)))[0].flag == FLAG_OK


@pytest.mark.slow
def test_a_lateral_film_gets_the_view_flag_through_every_backend(
    trusted: Path, shared_data: Path, tmp_path: Path
) -> None:
    """torch, ONNX Runtime, OpenVINO and an INT8 OpenVINO IR: the same rules on the same inputs.

    The rules read the preprocessed inputs (``predict_batch``), not a backend's internals, so every
    backend gives the same flags; a DICOM whose header says LL is flagged from the header.
    """
    import pydicom

    from cxrtool.export.int8 import export_int8
    from cxrtool.export.onnx import export_onnx
    from cxrtool.infer.predict import PredictOptions, predict_to_file
    from cxrtool.manifest import write_manifest

    laterals = sorted((shared_data / "lateral" / "images").glob("*.png"))
    lat = [f for f, v in zip(laterals, view_verdicts(_inputs(laterals))) if v == "lateral"][:3]
    frontal = sorted((shared_data / "covid3_256" / "normal").glob("*.png"))[:3]
    folder = tmp_path / "in"
    folder.mkdir()
    for f in lat + frontal:
        shutil.copy(f, folder / f.name)
    ds = pydicom.dcmread(shared_data / "dicom" / "chest" / "udacity_nih_test1.dcm")
    ds.ViewPosition = "LL"
    ds.save_as(folder / "header_lateral.dcm")
    expected = {f.name: "view:lateral" for f in lat} | {"header_lateral.dcm": "view:lateral"}

    onnx_path = export_onnx(trusted, tmp_path / "m.onnx", check_images=frontal).path
    calib = [
        {"path": str(f), "label": c, "split": s}
        for c in ("covid", "normal", "viral_pneumonia")
        for s, fs in (("train", slice(0, 6)), ("test", slice(40, 44)))
        for f in sorted((shared_data / "covid3_256" / c).glob("*.png"))[fs]
    ]
    int8 = export_int8(
        onnx_path, write_manifest(tmp_path / "calib.csv", calib), min_agreement=0.0, max_auc_drop=1.0
    ).path
    from cxrtool.infer.loading import load_backend

    runs = {
        "torch": (trusted, "torch", {}),
        "onnxruntime": (onnx_path, "onnxruntime", {}),
        "openvino": (onnx_path, "openvino", {"precision": "f32"}),
        "int8": (int8, "openvino", {}),
    }
    for name, (model, kind, opts) in runs.items():
        backend = load_backend(model, backend=kind, **opts)
        assert (backend.describe().get("precision") == "int8") == (name == "int8")
        out = tmp_path / f"{name}.csv"
        summary = predict_to_file([folder], backend, out, PredictOptions(batch_size=16, workers=0, reject_ood=True))
        rows = {Path(r["path"]).name: r for r in csv.DictReader(open(out, newline=""))}
        for film, flag in expected.items():
            assert rows[film]["flag"] == flag, (name, film)
            assert rows[film]["predicted"] == "" and rows[film]["p:covid"] != "", name  # --reject-ood: no class
        for f in frontal:
            assert not rows[f.name]["flag"].startswith("view:"), (name, f.name)
        assert summary.flags["view:lateral"] == len(expected), name
