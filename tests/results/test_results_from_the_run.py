"""One run: the model file is read and hashed once, and the DICOM results say what the run's CSVs say (issue 23).

The model is the tiny DenseNet with temperature 4 in its card (so raw and calibrated probabilities
differ) and its ONNX export beside it, which ``--backend auto`` picks on a CPU.  While a command runs,
every model file is moved away right after its one read, so anything that opened it again (safetensors,
onnx, ONNX Runtime, OpenVINO, a second hash) would fail the run instead of passing unnoticed.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from highdicom.sr import Comprehensive3DSR
from highdicom.sr.utils import find_content_items
from typer.testing import CliRunner

CLASSES = ["covid", "normal", "viral_pneumonia"]
TEMPERATURE = 4.0
FILMS = ["chest/CR-MONO1-10-chest.dcm", "chest/udacity_nih_test5.dcm", "nonchest/pydicom_dicomdirtests_CR1_6154.dcm"]
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # highdicom warns about one-component patient names


def _model(folder: Path, tiny_arch: str, calibration: dict) -> Path:
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.export.onnx import export_onnx
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    torch.manual_seed(1)
    card = ModelCard(
        arch=tiny_arch,
        task="multiclass",
        class_names=CLASSES,
        preprocess=PreprocessCfg(input_size=32),
        calibration=calibration,
    )
    ckpt = save_checkpoint(folder / "hot.safetensors", build_model(tiny_arch, num_classes=len(CLASSES)), card)
    export_onnx(ckpt)  # engines/hot.onnx: a current export, so auto can run it
    return ckpt


class ReadWatch:
    """Counts reads and hashes of model files; moves each file away after its read until :meth:`restore`."""

    def __init__(self, mp: pytest.MonkeyPatch):
        from cxrtool.modelfile import loaded

        self.reads: Counter = Counter()
        self.hashes: Counter = Counter()
        self.taken: list[Path] = []
        self._names: dict[bytes, str] = {}
        real_read, real_hashlib = loaded.read_model_bytes, loaded.hashlib

        def read(path: Path) -> bytes:
            data = real_read(path)
            self.reads[path.name] += 1
            self._names[data] = path.name
            path.rename(path.with_name(path.name + ".taken"))
            self.taken.append(path)
            return data

        def sha256(data: bytes = b""):
            self.hashes[self._names.get(data, "(other bytes)")] += 1
            return real_hashlib.sha256(data)

        mp.setattr(loaded, "read_model_bytes", read)
        mp.setattr(loaded, "hashlib", types.SimpleNamespace(sha256=sha256))

    def restore(self) -> None:
        for path in self.taken:
            path.with_name(path.name + ".taken").rename(path)
        self.taken.clear()


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory, tiny_arch) -> Iterator[dict]:
    """``predict --backend auto --dicom-out --html``, ``explain --target all --dicom-out --html``: 3 DICOMs + 1 PNG."""
    from cxrtool.cli.main import app

    tmp = tmp_path_factory.mktemp("one_run")
    ckpt = _model(tmp / "model", tiny_arch, {"split": "val", "n": 12, "temperature": TEMPERATURE})
    films = tmp / "films"
    films.mkdir()
    for name in FILMS:
        shutil.copyfile(shared_data / "dicom" / name, films / Path(name).name)
    shutil.copyfile(next((shared_data / "covid3_256" / "normal").glob("*.png")), films / "image.png")
    out: dict = {"tmp": tmp, "ckpt": ckpt}
    runner = CliRunner()
    for command, args in [
        (
            "predict",
            [
                "-o",
                str(tmp / "p.csv"),
                "--backend",
                "auto",
                "--workers",
                "0",
                "--dicom-out",
                str(tmp / "p_dcm"),
                "--html",
                str(tmp / "p.html"),
            ],
        ),
        (
            "explain",
            [
                "-o",
                str(tmp / "ex"),
                "--target",
                "all",
                "--dicom-out",
                str(tmp / "ex_dcm"),
                "--html",
                str(tmp / "ex.html"),
            ],
        ),
    ]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CXRTOOL_CACHE_DIR", str(tmp / "speed"))  # no bench measurement: auto decides by CPU flags
            watch = ReadWatch(mp)
            try:
                res = runner.invoke(app, [command, str(films), "-m", str(ckpt), *args])
            finally:
                watch.restore()
            assert res.exit_code == 0, res.output
            out[command] = watch
    yield out


def _sr_numbers(path: Path) -> tuple[dict[str, float], str]:
    """``{class: probability}`` and the ``calibrated=`` parameter of one SR."""
    sr = Comprehensive3DSR.from_dataset(pydicom.dcmread(path))
    nums = find_content_items(sr, value_type="NUM", recursive=True)
    names = [i.ConceptNameCodeSequence[0].CodeMeaning for i in nums]
    probs = {
        name.removeprefix("Probability of "): float(i.MeasuredValueSequence[0].NumericValue)
        for name, i in zip(names, nums)
        if name.startswith("Probability of ")
    }
    params = [
        i.TextValue
        for i in find_content_items(sr, value_type="TEXT", recursive=True)
        if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"
    ]
    return probs, next(p.split("=", 1)[1] for p in params if p.startswith("calibrated="))


def _results(folder: Path) -> dict[str, Path]:
    with open(folder / "dicom_results.csv", encoding="utf-8", newline="") as fh:
        return {Path(r["path"]).name: Path(r["sr"]) for r in csv.DictReader(fh) if r["status"] == "written"}


def test_each_model_file_is_read_and_hashed_once_per_run(runs):
    predict, explain = runs["predict"], runs["explain"]
    assert predict.reads == Counter({"hot.safetensors": 1, "hot.onnx": 1}), predict.reads  # auto looked at the export
    assert predict.hashes == predict.reads
    assert explain.reads == Counter({"hot.safetensors": 1}) and explain.hashes == explain.reads
    with open(runs["tmp"] / "p.csv", encoding="utf-8", newline="") as fh:
        backends = {r["backend"] for r in csv.DictReader(fh)}
    assert backends <= {"onnxruntime", "openvino"}, backends  # the export ran, built from the bytes read once
    assert (runs["tmp"] / "p.html").is_file() and (runs["tmp"] / "ex.html").is_file()
    assert len(list((runs["tmp"] / "p_dcm").glob("*.sc.dcm"))) == len(FILMS)  # heatmaps from the same loaded checkpoint


def test_predict_sr_carries_the_rows_calibrated_probabilities(runs):
    with open(runs["tmp"] / "p.csv", encoding="utf-8", newline="") as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    written = _results(runs["tmp"] / "p_dcm")
    assert sorted(written) == sorted(Path(f).name for f in FILMS)
    for name, sr in written.items():
        probs, calibrated = _sr_numbers(sr)
        assert probs == pytest.approx({c: float(rows[name][f"p:{c}"]) for c in CLASSES}, abs=1e-6)
        assert calibrated == "yes"


def test_explain_sr_carries_explains_calibrated_probabilities(runs):
    with open(runs["tmp"] / "ex" / "explain.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    written = _results(runs["tmp"] / "ex_dcm")
    assert sorted(written) == sorted(Path(f).name for f in FILMS)
    differ = 0.0
    for name, sr in written.items():
        mine = {r["target"]: r for r in rows if Path(r["path"]).name == name}
        expected = {c: float(mine[c]["target_prob"]) for c in CLASSES}
        probs, calibrated = _sr_numbers(sr)
        assert probs == pytest.approx(expected, abs=1e-6) and calibrated == "yes"
        logits = np.array([float(mine[c]["target_logit"]) for c in CLASSES])
        scaled = np.exp(logits / TEMPERATURE - (logits / TEMPERATURE).max())
        assert [probs[c] for c in CLASSES] == pytest.approx(scaled / scaled.sum(), abs=1e-5)  # softmax(logits / T)
        raw = np.exp(logits - logits.max())
        differ = max(differ, float(np.abs(raw / raw.sum() - scaled / scaled.sum()).max()))
    assert differ > 1e-3  # the temperature matters for these films: raw probabilities would fail the checks above


def test_calibrated_is_no_without_a_temperature(shared_data, tmp_path, tiny_arch):
    """A model without a fitted temperature: the SR says calibrated=no, with the run's (uncalibrated) probabilities."""
    from cxrtool.cli.main import app

    ckpt = _model(tmp_path / "model", tiny_arch, {})
    film = tmp_path / "films" / "film.dcm"
    film.parent.mkdir()
    shutil.copyfile(shared_data / "dicom" / FILMS[1], film)
    res = CliRunner().invoke(
        app,
        [
            "explain",
            str(film.parent),
            "-m",
            str(ckpt),
            "-o",
            str(tmp_path / "ex"),
            "--dicom-out",
            str(tmp_path / "dcm"),
        ],
    )
    assert res.exit_code == 0, res.output
    with open(tmp_path / "ex" / "explain.csv", encoding="utf-8", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    probs, calibrated = _sr_numbers(_results(tmp_path / "dcm")["film.dcm"])
    assert calibrated == "no" and probs[row["predicted"]] == pytest.approx(float(row["predicted_prob"]), abs=1e-6)


def test_model_id_is_the_hash_of_the_bytes_read(runs):
    """Every SR of the explain run names the checkpoint by the sha256 of the bytes the run read."""
    want = f"model=hot@{hashlib.sha256(runs['ckpt'].read_bytes()).hexdigest()[:12]}"
    for sr in _results(runs["tmp"] / "ex_dcm").values():
        report = Comprehensive3DSR.from_dataset(pydicom.dcmread(sr))
        params = [
            i.TextValue
            for i in find_content_items(report, value_type="TEXT", recursive=True)
            if i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"
        ]
        assert want in params
