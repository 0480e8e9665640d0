"""``cxrtool explain`` end to end on real films (PNG, JPEG, DICOM) with a tiny trained checkpoint."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app

from .conftest import CLASSES


@pytest.fixture(scope="module")
def checkpoint(trained_checkpoint) -> Path:
    return trained_checkpoint


def _real_inputs(shared_data: Path) -> list[Path]:
    return [
        shared_data / "covid3/covid/k_train_01.jpeg",
        shared_data / "covid3/covid/k_train_010.png",
        shared_data / "dicom/chest/rsna_c64d5667-a776-4f95-9e21-bfabafb07740.dcm",
        shared_data / "dicom/chest/txv_Fake_MONOHR1.dcm",  # MONOCHROME1
    ]


def _sha(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_explain_files_and_folder_with_a_broken_file(shared_data, checkpoint, tmp_path):
    inputs = _real_inputs(shared_data)
    hashes = _sha(inputs)
    folder = tmp_path / "in" / "sub"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"")
    (folder / "film.jpeg").symlink_to(inputs[0])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["explain", *map(str, inputs), str(tmp_path / "in"), "-m", str(checkpoint), "-o", str(out), "-b", "3"]
    )
    assert result.exit_code == 1, result.output  # one unreadable file
    rows = list(csv.DictReader((out / "explain.csv").open()))
    errors = [r for r in rows if r["error"]]
    assert len(errors) == 1 and errors[0]["path"].endswith("broken.png") and "empty" in errors[0]["error"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == len(inputs) + 1
    for row in good:
        heat = np.load(row["heatmap"])
        assert heat.shape == (64, 64) and heat.dtype == np.float32 and np.abs(heat).sum() > 0
        assert float(row["relevance_sum"]) == pytest.approx(float(heat.sum()), rel=1e-4)
        assert row["explained"] == "log-odds"  # the default for a multiclass model
        value = float(row["explained_value"])  # conservation, readable per film in the CSV
        assert abs(float(row["relevance_sum"]) + float(row["bias_share"]) - value) <= 0.05 * abs(value) + 1e-3
        assert row["target"] == row["predicted"] in CLASSES
        assert Path(row["overlay"]).stat().st_size > 0 and Path(row["panel"]).stat().st_size > 0
        assert 0 <= float(row["pos_share_border"]) <= 1
    assert (out / "sub" / f"film.{good[-1]['target']}.overlay.png").exists()  # folder layout kept
    assert _sha(inputs) == hashes  # inputs untouched
    assert "Shortcut audit" in result.output


def test_explain_all_targets_and_gamma_box(shared_data, checkpoint, tmp_path):
    film = _real_inputs(shared_data)[1]
    args = ["explain", str(film), "-m", str(checkpoint), "-o", str(tmp_path), "--target", "all"]
    args += ["-c", "epsilon_gamma_box", "--explained", "logit"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "explain.csv").open()))
    assert sorted(r["target"] for r in rows) == sorted(CLASSES)
    assert len({r["relevance_sum"] for r in rows}) == 3
    assert all(r["explained"] == "logit" and r["explained_value"] == r["target_logit"] for r in rows)


def test_explain_usage_errors(shared_data, checkpoint, tmp_path):
    film = str(_real_inputs(shared_data)[1])
    bad_target = CliRunner().invoke(
        app, ["explain", film, "-m", str(checkpoint), "-o", str(tmp_path), "--target", "pneumothorax"]
    )
    assert bad_target.exit_code == 2 and "pneumothorax" in bad_target.output
    missing = CliRunner().invoke(app, ["explain", film, "-m", str(tmp_path / "nope.safetensors"), "-o", str(tmp_path)])
    assert missing.exit_code == 2 and "not found" in missing.output
    assert not (tmp_path / "explain.csv").exists()


def test_explain_folder_reports_the_data_side_shortcut_audit(shared_data, checkpoint, tmp_path):
    """Class folders of real films: thumbnail and feature probes and map comparison in the summary."""
    for cls in CLASSES:
        (tmp_path / "in" / cls).mkdir(parents=True)
        for f in sorted((shared_data / "covid3_256" / cls).glob("*.png"))[-8:]:
            (tmp_path / "in" / cls / f.name).symlink_to(f)
    result = CliRunner().invoke(
        app, ["explain", str(tmp_path / "in"), "-m", str(checkpoint), "-o", str(tmp_path / "out")]
    )
    assert result.exit_code == 0, result.output
    assert "8x8 thumbnail -> input folder: balanced accuracy" in result.output
    assert "penultimate features -> input folder" in result.output
    assert "correlation of class-mean relevance maps" in result.output


def test_explained_quantity_follows_the_task():
    """auto: log-odds for multiclass, logit for multilabel; log-odds of independent sigmoid classes is a usage error."""
    from cxrtool.errors import CxrError
    from cxrtool.explain.attribution import resolve_quantity
    from cxrtool.task import get_task

    multiclass, multilabel = get_task("multiclass"), get_task("multilabel")
    assert resolve_quantity("auto", multiclass) == "log-odds" and resolve_quantity("auto", multilabel) == "logit"
    assert resolve_quantity("logit", multiclass) == "logit"
    with pytest.raises(CxrError, match="multiclass"):
        resolve_quantity("log-odds", multilabel)
