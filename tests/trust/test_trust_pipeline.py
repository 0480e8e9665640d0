"""Trust end to end on real films: train fits it, calibrate refits it, every backend scores alike, rows carry it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.export.parity import load_check_batch
from cxrtool.modelfile import TRUST_PREFIX, file_sha256, read_card
from cxrtool.models.checkpoint import load_checkpoint
from cxrtool.trust import FLAG_OK, FLAG_OOD, load_trust
from cxrtool.trust.store import checkpoint_tensors

RUN = CliRunner()


def test_training_fits_trust_into_the_best_checkpoint(trusted: Path) -> None:
    card = read_card(trusted)
    assert card.calibration["split"] == "val" and card.calibration["n"] == 24 and card.calibration["temperature"] > 0
    assert card.ood["n_train"] == 36 and card.ood["n_val"] == 24 and card.ood["quantile"] == 0.95
    names = [d["name"] for d in card.ood["depths"]]
    assert names == ["transition1", "penultimate"]
    tensors = checkpoint_tensors(trusted)
    assert set(tensors) == {f"{TRUST_PREFIX}ood.{n}.{kind}" for n in names for kind in ("means", "precision")}
    model, _ = load_checkpoint(trusted)  # strict weight loading ignores the statistics
    assert not any(k.startswith(TRUST_PREFIX) for k in model.state_dict())


def test_no_trust_flag_leaves_a_plain_checkpoint(films: Path, tiny_arch: str, tmp_path: Path) -> None:
    from cxrtool.train.config import TrainConfig
    from cxrtool.train.events import TrustFitted
    from cxrtool.train.loop import fit

    events: list = []
    cfg = TrainConfig(
        manifest=str(films),
        out_dir=str(tmp_path),
        init="none",
        arch=tiny_arch,
        input_size=32,
        epochs=1,
        batch_size=12,
        workers=0,
        device="cpu",
        trust=False,
    )
    fit(cfg, on_event=events.append)
    card = read_card(tmp_path / "best.safetensors")
    assert card.ood == {} and card.calibration == {} and checkpoint_tensors(tmp_path / "best.safetensors") == {}
    assert not any(isinstance(e, TrustFitted) for e in events)


def test_calibrate_an_old_checkpoint_writes_a_new_one_naming_it(
    old_checkpoint: Path, films: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cal.safetensors"
    before = file_sha256(old_checkpoint)
    result = RUN.invoke(app, ["calibrate", str(old_checkpoint), str(films), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert file_sha256(old_checkpoint) == before  # the input is never modified
    card = read_card(out)
    assert card.lineage[0]["source"] == "calibrate" and card.lineage[0]["sha256"] == before
    assert card.ood["n_train"] == 36 and "temperature" in card.calibration
    assert f"threshold {card.ood['threshold']:.4f}" in result.output
    # keep: same Gaussians, scaling and threshold refitted on another split
    kept = tmp_path / "kept.safetensors"
    result = RUN.invoke(
        app, ["calibrate", str(out), str(films), "--fit-split", "keep", "--split", "test", "--out", str(kept)]
    )
    assert result.exit_code == 0, result.output
    a, b = checkpoint_tensors(out), checkpoint_tensors(kept)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert read_card(kept).ood["val_split"] == "test" and read_card(kept).ood["threshold"] != card.ood["threshold"]
    result = RUN.invoke(
        app,
        ["calibrate", str(old_checkpoint), str(films), "--fit-split", "keep", "--out", str(tmp_path / "x.safetensors")],
    )
    assert result.exit_code == 2 and "no OOD statistics to keep" in result.output


def test_every_backend_gives_the_same_ood_score(trusted: Path, shared_data: Path, tmp_path: Path) -> None:
    from cxrtool.export.onnx import export_onnx
    from cxrtool.infer.loading import load_backend
    from cxrtool.modelfile import FEATURES_NAME

    films = sorted((shared_data / "covid3").rglob("*.png"))[::40] + [shared_data / "dicom" / "nonchest" / "RG3_RLE.dcm"]
    onnx_path = export_onnx(trusted, tmp_path / "m.onnx", check_images=films[:4]).path
    import onnx

    assert [o.name for o in onnx.load(str(onnx_path)).graph.output] == ["logits", FEATURES_NAME]
    torch_b = load_backend(trusted, backend="torch")
    batch, _ = load_check_batch(films, torch_b.card.preprocess, limit=len(films))
    trust = load_trust(trusted, torch_b.card)
    ref = trust.ood.score(torch_b.run_features(batch)[1])
    assert np.ptp(ref) > 0.5  # the films really differ, so equal scores are not an accident
    for name, options in (("onnxruntime", {}), ("openvino", {"precision": "f32"})):
        b = load_backend(onnx_path, backend=name, **options)
        got = load_trust(onnx_path, b.card).ood.score(b.run_features(batch)[1])
        assert np.max(np.abs(got - ref) / np.maximum(1.0, np.abs(ref))) <= 1e-3, name


def _inputs(shared_data: Path, folder: Path) -> Path:
    folder.mkdir()
    for f in sorted((shared_data / "covid3_256" / "normal").glob("*.png"))[:3]:
        shutil.copy(f, folder / f.name)
    shutil.copy(shared_data / "dicom" / "chest" / "udacity_nih_test5.dcm", folder / "ct_header.dcm")
    return folder


def test_predict_rows_carry_score_flag_and_calibrated_probabilities(
    trusted: Path, shared_data: Path, tmp_path: Path
) -> None:
    folder = _inputs(shared_data, tmp_path / "in")
    out = tmp_path / "p.csv"
    result = RUN.invoke(
        app, ["predict", str(folder), "-m", str(trusted), "-o", str(out), "--backend", "torch", "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(out, newline=""))}
    assert rows["ct_header.dcm"]["flag"] == "header:modality CT is not CR/DX/DR"
    assert all(r["flag"] in (FLAG_OK, FLAG_OOD) for n, r in rows.items() if n != "ct_header.dcm")
    assert all(r["ood_score"] != "" for r in rows.values())
    assert "flagged: header:modality CT is not CR/DX/DR" in result.output
    # calibrated: the card's temperature applied to the model's logits
    model, card = load_checkpoint(trusted)
    import torch

    from cxrtool.preprocess import load_input

    name = sorted(rows)[0]
    with torch.no_grad():
        z = model(torch.from_numpy(load_input(folder / name, card.preprocess)[None])).numpy()
    expected = card.task.probs(z / card.calibration["temperature"])[0]
    got = [float(rows[name][f"p:{c}"]) for c in card.class_names]
    np.testing.assert_allclose(got, expected, atol=2e-6)
    # --reject-ood: flagged films keep probabilities, lose the class
    result = RUN.invoke(
        app,
        [
            "predict",
            str(folder),
            "-m",
            str(trusted),
            "-o",
            str(out),
            "--overwrite",
            "--backend",
            "torch",
            "--workers",
            "0",
            "--reject-ood",
        ],
    )
    assert result.exit_code == 0, result.output
    for r in csv.DictReader(open(out, newline="")):
        assert (r["predicted"] == "") == (r["flag"] != FLAG_OK) and r["p:covid"] != ""


def test_an_old_checkpoint_still_predicts_with_a_notice(
    old_checkpoint: Path, shared_data: Path, tmp_path: Path
) -> None:
    folder = _inputs(shared_data, tmp_path / "in")
    out = tmp_path / "p.jsonl"
    result = RUN.invoke(
        app, ["predict", str(folder), "-m", str(old_checkpoint), "-o", str(out), "--backend", "torch", "--workers", "0"]
    )
    assert result.exit_code == 0, result.output
    assert "has no out-of-distribution statistics" in result.output and "cxrtool calibrate" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["ood_score"] is None for r in rows)
    assert {r["flag"] for r in rows} == {FLAG_OK, "header:modality CT is not CR/DX/DR"}  # the header gate still works


def test_evaluate_reports_calibration_and_flags(trusted: Path, films: Path, tmp_path: Path) -> None:
    result = RUN.invoke(
        app,
        [
            "evaluate",
            str(trusted),
            str(films),
            "--split",
            "val",
            "--out",
            str(tmp_path),
            "--bootstrap",
            "0",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "metrics.json").read_text())
    card = read_card(trusted)
    assert m["ece"] == pytest.approx(card.calibration["ece"], abs=1e-6)  # the val split calibrate saw
    assert m["ece_calibrated"] == pytest.approx(card.calibration["ece_calibrated"], abs=1e-6)
    assert m["ood_flagged"] == 1  # at least 95% of the 24 val films pass the threshold fitted on them: 23
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (tmp_path / "predictions.csv").read_text().splitlines()[0]
    assert header.endswith("ood_score,flag,error")


def test_explain_rows_and_titles_say_out_of_distribution(trusted: Path, shared_data: Path, tmp_path: Path) -> None:
    from cxrtool.explain.attribution import _flag_title

    folder = _inputs(shared_data, tmp_path / "in")
    result = RUN.invoke(app, ["explain", str(folder), "-m", str(trusted), "-o", str(tmp_path / "ex")])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(tmp_path / "ex" / "explain.csv", newline=""))}
    assert (
        rows["ct_header.dcm"]["flag"] == "header:modality CT is not CR/DX/DR"
        and rows["ct_header.dcm"]["ood_score"] != ""
    )
    # explain reads the score's features off its own (canonized) forward: the same scores as predict's
    out = tmp_path / "p.csv"
    assert (
        RUN.invoke(
            app, ["predict", str(folder), "-m", str(trusted), "-o", str(out), "--backend", "torch", "--workers", "0"]
        ).exit_code
        == 0
    )
    for r in csv.DictReader(open(out, newline="")):
        mine = rows[Path(r["path"]).name]
        assert abs(float(mine["ood_score"]) - float(r["ood_score"])) <= 1e-4 * max(1.0, abs(float(r["ood_score"])))
        assert (mine["flag"], mine["predicted"]) == (r["flag"], r["predicted"])
    assert "out of distribution" in _flag_title(FLAG_OOD) and "out of distribution" in _flag_title(
        "header:modality CT is not CR/DX/DR"
    )
    assert _flag_title(FLAG_OK) == ""
