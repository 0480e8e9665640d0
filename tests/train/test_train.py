"""Real DenseNet121 at 32 px on real fixture films: the twice-transfer chain, resume equality, evaluate.

Small on purpose (a few steps per stage); the point is the plumbing, not the accuracy.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.errors import CxrError
from cxrtool.labels import CHESTXRAY14
from cxrtool.manifest import read_manifest, write_manifest
from cxrtool.modelfile import file_sha256, read_card
from cxrtool.models import build_model
from cxrtool.models.checkpoint import load_checkpoint, load_state_dict
from cxrtool.models.pretrained import initialise
from cxrtool.train.config import TrainConfig, resolve_config
from cxrtool.train.events import RunWarning, SetupDone
from cxrtool.train.loop import fit, resume_config

pytestmark = pytest.mark.shared_data
COVID3 = ["covid", "normal", "viral_pneumonia"]


def _cfg(manifest: Path, out: Path, **kw) -> TrainConfig:
    base = {"manifest": str(manifest), "out_dir": str(out), "input_size": 32, "workers": 0, "device": "cpu"}
    return TrainConfig(**(base | kw))


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def stage1(nih_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stage1")
    result = fit(_cfg(nih_small, out, init="none", epochs=2, batch_size=16, scheduler="constant", augment=False))
    assert result.status == "completed"
    return out


def test_stage1_multilabel_learns_and_logs(stage1: Path) -> None:
    log = _log(stage1)
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[1]["train_loss"] < log[0]["train_loss"]  # loss falls
    assert all(isinstance(r["val_auc_macro"], float) for r in log)  # per-finding AUC where both outcomes exist
    card = read_card(stage1 / "best.safetensors")
    assert card.task.name == "multilabel" and card.class_names == list(CHESTXRAY14)
    assert card.preprocess.input_size == 32 and card.config["init"] == "none"
    with open(stage1 / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and "val_per_class:Effusion:auc" in rows[0]


def test_kept_rows_equal_stage1_rows(stage1: Path) -> None:
    parent, _ = load_checkpoint(stage1 / "best.safetensors")
    child = build_model("densenet121", num_classes=3)
    report = initialise(
        child,
        str(stage1 / "best.safetensors"),
        arch="densenet121",
        class_names=COVID3,
        keep_neurons=True,
        keep_map={"viral_pneumonia": "Pneumonia"},
    )
    pneumonia = CHESTXRAY14.index("Pneumonia")
    assert report.kept == [("viral_pneumonia", "Pneumonia")] and report.fresh == ["covid", "normal"]
    assert torch.equal(child.classifier.weight[2], parent.classifier.weight[pneumonia])
    assert torch.equal(child.classifier.bias[2], parent.classifier.bias[pneumonia])
    assert not any(torch.equal(child.classifier.weight[0], row) for row in parent.classifier.weight)


def test_stage2_cli_twice_transfer_then_evaluate(stage1: Path, covid_small: Path, tmp_path: Path) -> None:
    s1 = stage1 / "best.safetensors"
    out = tmp_path / "stage2"
    args = [
        "train",
        str(covid_small),
        "--init",
        str(s1),
        "--keep-neurons",
        "--keep-map",
        "viral_pneumonia=Pneumonia",
        "--epochs",
        "2",
        "--freeze-epochs",
        "2",
        "--batch-size",
        "12",
        "--lr",
        "0.01",
        "--scheduler",
        "constant",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "kept output neurons: viral_pneumonia <- Pneumonia" in result.output
    log = _log(out)
    assert [r["frozen"] for r in log] == [True, True]
    assert all(isinstance(r["val_accuracy"], float) and isinstance(r["val_macro_f1"], float) for r in log)
    assert log[1]["train_loss"] < log[0]["train_loss"]
    card = read_card(out / "best.safetensors")
    assert card.task.name == "multiclass" and card.class_names == COVID3
    assert card.preprocess.input_size == 32  # inherited from the stage-1 card
    assert card.lineage[0]["sha256"] == file_sha256(s1) and card.lineage[0]["class_names"] == list(CHESTXRAY14)
    assert card.config["keep_map"] == {"viral_pneumonia": "Pneumonia"}
    # a frozen backbone (weights and BatchNorm statistics) is still stage 1's
    s1_state, s2_state = load_state_dict(s1), load_state_dict(out / "last.safetensors")
    assert all(torch.equal(s2_state[k], v) for k, v in s1_state.items() if k.startswith("features."))

    # evaluate on the test split, with one unreadable file added
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    m = read_manifest(covid_small)
    rows = m.select("test").rows + [{"path": str(bad), "label": "covid", "split": "test"}]
    manifest = write_manifest(tmp_path / "test.csv", rows)
    ev = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(out / "best.safetensors"),
            str(manifest),
            "--out",
            str(ev),
            "--bootstrap",
            "200",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1, result.output  # one input failed, the rest evaluated
    assert "broken.png" in result.output
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["n"] == len(rows) - 1 and metrics["failed"] == 1
    lo, hi = metrics["ci"]["accuracy"]
    assert lo <= metrics["accuracy"] <= hi
    with open(ev / "predictions.csv", newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert len(preds) == len(rows) and preds[-1]["error"] and preds[-1]["pred"] == ""
    assert all(p["pred"] in COVID3 for p in preds[:-1])
    for png in ("roc.png", "confusion_matrix.png"):
        assert (ev / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_equals_uninterrupted_run(covid_small: Path, tmp_path: Path) -> None:
    """4 epochs straight == Ctrl-C in epoch 2 + --resume (cosine LR, augmentation, balanced sampler)."""
    kw = {"init": "none", "arch": "densenet_tiny", "epochs": 4, "batch_size": 12, "balance": "sampler", "lr": 3e-3}
    straight = fit(_cfg(covid_small, tmp_path / "a", **kw))

    # The interrupted run gets a fresh interpreter, as `cxrtool train` has: a SIGINT raised in a test process
    # that already hosts OpenVINO/ONNX Runtime thread pools (from other test files) can crash it.
    cfg_json = json.dumps(_cfg(covid_small, tmp_path / "b", **kw).to_dict())
    script = f"""
import json, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from tiny_arch import register_tiny_arch
register_tiny_arch()
from cxrtool.train.config import TrainConfig
from cxrtool.train.events import StepDone
from cxrtool.train.loop import fit
def interrupt(event):
    if isinstance(event, StepDone) and event.epoch == 2 and event.step == 1:
        signal.raise_signal(signal.SIGINT)  # the real handler: finish this step, save, stop
cut = fit(TrainConfig.from_dict(json.loads({cfg_json!r})), on_event=interrupt)
print(json.dumps([cut.status, cut.epochs_done, signal.getsignal(signal.SIGINT) is signal.default_int_handler]))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    status, epochs_done, handler_restored = json.loads(proc.stdout.strip().splitlines()[-1])
    assert status == "interrupted" and epochs_done == 1 and handler_restored
    resumed = fit(resume_config(tmp_path / "b"), resume=True)
    assert resumed.status == "completed" and resumed.epochs_done == 4
    a, b = load_state_dict(tmp_path / "a" / "last.safetensors"), load_state_dict(tmp_path / "b" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in _log(tmp_path / "a")] == [r["train_loss"] for r in _log(tmp_path / "b")]
    assert (straight.best_epoch, straight.best_value) == (resumed.best_epoch, resumed.best_value)


def test_config_precedence_and_errors(covid_small: Path, tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(f'manifest = "{covid_small}"\nout_dir = "x"\ninit = "none"\nepochs = 7\nlr = 0.5\n')
    cfg = resolve_config(toml, {"lr": 0.01, "epochs": None})
    assert (cfg.epochs, cfg.lr, cfg.batch_size) == (7, 0.01, 32)
    toml.write_text("epoch = 3\n")
    with pytest.raises(CxrError, match="unknown option\\(s\\) epoch"):
        resolve_config(toml, {})
    with pytest.raises(CxrError, match="--init is required"):
        resolve_config(None, {"manifest": "m.csv", "out_dir": "o"})
    with pytest.raises(CxrError, match="fewer than --batch-size 64"):
        fit(_cfg(covid_small, tmp_path / "o", init="none", batch_size=64))


def test_cli_reports_missing_imagenet_weights(
    covid_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = CliRunner().invoke(
        app,
        [
            "train",
            str(covid_small),
            "--init",
            "imagenet",
            "--out",
            str(tmp_path / "o"),
            "--input-size",
            "32",
            "--batch-size",
            "4",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 2
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "densenet121-a639ec97.pth") in result.output
    assert "Traceback" not in result.output


def test_cpu_amp_bf16_runs_and_fp16_degrades_with_a_warning(covid_small: Path, tmp_path: Path) -> None:
    events: list = []
    kw = {"init": "none", "arch": "densenet_tiny", "epochs": 1, "batch_size": 12, "augment": False}
    result = fit(_cfg(covid_small, tmp_path / "bf16", amp="bf16", **kw), on_event=events.append)
    setup = next(e for e in events if isinstance(e, SetupDone))
    assert setup.runtime == "cpu bf16" and result.status == "completed"
    assert all(torch.isfinite(v).all() for v in load_state_dict(tmp_path / "bf16" / "last.safetensors").values())
    events.clear()
    fit(_cfg(covid_small, tmp_path / "fp16", amp="fp16", **kw), on_event=events.append)
    assert any(isinstance(e, RunWarning) and "fp16 autocast needs CUDA" in e.message for e in events)
    assert next(e for e in events if isinstance(e, SetupDone)).runtime == "cpu fp32"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_cuda_amp_channels_last(covid_small: Path, tmp_path: Path, amp: str) -> None:
    events: list = []
    cfg = _cfg(
        covid_small, tmp_path, init="none", arch="densenet_tiny", epochs=2, batch_size=12, device="cuda", amp=amp
    )
    result = fit(cfg, on_event=events.append)
    assert result.status == "completed"
    assert next(e for e in events if isinstance(e, SetupDone)).runtime == f"cuda:0 {amp} channels_last"
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert bool(state["scaler"]) == (amp == "fp16")  # the grad scaler is active only for fp16
    resumed = fit(resume_config(tmp_path), resume=True)
    assert resumed.status == "completed"
