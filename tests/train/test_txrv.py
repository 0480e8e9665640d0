"""torchxrayvision files as stage 1: read safely, same logits on real films, neuron keeping, stage 2 end to end.

The files are made here the way torchxrayvision publishes them (``torch.save(model)`` of its own
``DenseNet``, random weights with batch-norm statistics from real films); nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrtool.errors import CxrError
from cxrtool.modelfile import file_sha256, read_card
from cxrtool.models import build_model, catalog
from cxrtool.models.checkpoint import load_checkpoint, save_checkpoint
from cxrtool.models.pretrained import initialise, read_parent_card
from cxrtool.models.safe_pickle import (
    UnsafePickleError,
    module_state_dict,
    read_torch_file,
)
from cxrtool.models.txrv import TXRV_MEAN, TXRV_STD, txrv_preprocess
from cxrtool.preprocess import load_gray, normalize

xrv = pytest.importorskip("torchxrayvision", reason="torchxrayvision (test extra) builds the original architecture")

pytestmark = pytest.mark.shared_data
NIH = catalog.KNOWN["densenet121-res224-nih"]
NIH14 = [n for n in NIH.labels if n]
COVID3 = ["covid", "normal", "viral_pneumonia"]
ROOT = Path(__file__).resolve().parents[2]


def _films(shared: Path) -> list[Path]:
    """Real films: two 640 px originals and one 256 px copy per class (all square, as the sets are)."""
    films = []
    for cls in COVID3:
        films += sorted((shared / "covid3" / cls).glob("*.png"))[:1]
        films += sorted((shared / "covid3_256" / cls).glob("*.png"))[:1]
    return films


def _txrv_input(film: Path, cfg) -> torch.Tensor:
    """torchxrayvision's own scaling (``xrv.utils.normalize(img, 255)``) of the resized 8-bit-range film."""
    gray = load_gray(film, cfg)
    return torch.from_numpy(xrv.utils.normalize(gray * 255.0, 255)[None, None]).float()


@pytest.fixture(scope="module")
def original(shared_data: Path) -> torch.nn.Module:
    """torchxrayvision's DenseNet, random weights, BatchNorm statistics from real films (as training leaves them)."""
    torch.manual_seed(0)
    model = xrv.models.DenseNet(num_classes=18)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.momentum = None  # cumulative average over the calibration batch
        model.classifier.bias.uniform_(-1, 1)
        cfg = txrv_preprocess()
        model.train()
        model(torch.cat([_txrv_input(f, cfg) for f in _films(shared_data)]))
    return model.eval()


@pytest.fixture(scope="module")
def txrv_file(original: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Saved as torchxrayvision saves its weights, under the published file name."""
    path = tmp_path_factory.mktemp("txrv") / NIH.filename
    torch.save(original, path)
    return path


def _imported(spec: str) -> torch.nn.Module:
    model = build_model("densenet121", num_classes=len(NIH14), in_chans=1)
    report = initialise(model, spec, arch="densenet121", class_names=NIH14, keep_neurons=True)
    assert [new for new, _ in report.kept] == NIH14  # every output comes from the file
    return model.eval()


def test_imported_model_gives_the_original_logits_on_real_films(
    original: torch.nn.Module, txrv_file: Path, shared_data: Path
) -> None:
    card = read_parent_card(f"txrv:{txrv_file}")
    assert card is not None and card.class_names == NIH14 and card.task.name == "multilabel"
    cfg = card.preprocess
    assert (cfg.input_size, cfg.channels, cfg.mean, cfg.std, cfg.resize) == (224, 1, (0.5,), (1 / 2048,), "center_crop")
    model = _imported(f"txrv:{txrv_file}")
    keep = [i for i, n in enumerate(NIH.labels) if n]
    films = _films(shared_data)
    ours = torch.stack([torch.from_numpy(normalize(load_gray(f, cfg), cfg)) for f in films])
    theirs = torch.cat([_txrv_input(f, cfg) for f in films])
    assert torch.allclose(ours, theirs, atol=1e-3, rtol=0)  # the [-1024, 1024] scaling, from mean/std
    with torch.no_grad():
        want = original(theirs)[:, keep]  # op_threshs is None here: raw logits
        got = model(ours)
    assert want.abs().max() > 0.1 and want.std() > 0.01  # a model whose logits vary, not one that outputs ~0
    worst = (got - want).abs().max().item()
    assert worst <= 1e-4, worst


def test_zip_and_legacy_files_read_exactly_without_torchxrayvision(original: torch.nn.Module, tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pt"
    torch.save(original, legacy, _use_new_zipfile_serialization=False)
    zipped = tmp_path / "zipped.pt"
    torch.save(original, zipped)
    ref = original.state_dict()
    for path in (zipped, legacy):
        state = module_state_dict(read_torch_file(path))
        assert state.keys() == ref.keys() and all(torch.equal(state[k], ref[k]) for k in ref), path
    # a process where torchxrayvision cannot even be imported reads the same file
    code = (
        "import sys; sys.modules['torchxrayvision'] = None\n"
        "from cxrtool.models.safe_pickle import read_torch_file, module_state_dict\n"
        f"obj = read_torch_file({str(legacy)!r}); print(obj.qualname, len(module_state_dict(obj)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["torchxrayvision.models.DenseNet", str(len(ref))]


class _Payload:
    """A pickle whose ``__reduce__`` creates ``marker`` with one of three ways to run code."""

    def __init__(self, how: str, marker: Path):
        self.how, self.marker = how, str(marker)

    def __reduce__(self):
        if self.how == "os.system":
            return (os.system, (f"touch {self.marker}",))
        if self.how == "builtins.exec":
            return (exec, (f"open({self.marker!r}, 'w').close()",))
        return (subprocess.call, (["touch", self.marker],))


PAYLOADS = ("os.system", "builtins.exec", "subprocess.call")
FORMATS = ("zip", "legacy", "inside-a-model")


def _evil_file(folder: Path, how: str, fmt: str, marker: Path) -> Path:
    """Saved in torchxrayvision's published file name, so nothing but its content can give it away."""
    path = folder / f"{how}-{fmt}" / NIH.filename
    path.parent.mkdir()
    payload = _Payload(how, marker)
    if fmt == "inside-a-model":
        model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
        model.evil = payload  # a plain attribute, pickled with the module's state by torch.save(model)
        torch.save(model, path)
    else:
        torch.save({"state_dict": payload}, path, _use_new_zipfile_serialization=fmt == "zip")
    return path


@pytest.mark.parametrize("how", PAYLOADS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_malicious_file_is_refused_before_any_code_runs(how: str, fmt: str, tmp_path: Path, tiny_arch: str) -> None:
    marker = tmp_path / "pwned"
    path = _evil_file(tmp_path, how, fmt, marker)
    for spec in (f"txrv:{path}", str(path)):
        with pytest.raises(UnsafePickleError, match="refused to call"):
            initialise(build_model(tiny_arch, num_classes=3), spec, arch="densenet121", class_names=COVID3)
        with pytest.raises(CxrError, match=f"{path.name}: refused to load"):
            read_parent_card(spec)
    assert not marker.exists()


def test_the_malicious_files_do_run_code_when_unpickled_the_usual_way(tmp_path: Path) -> None:
    """Control for the test above: its files are live (one process loads all nine with torch.load)."""
    files = [_evil_file(tmp_path, how, fmt, tmp_path / f"ran-{how}-{fmt}") for how in PAYLOADS for fmt in FORMATS]
    code = "import sys, torch\nfor p in sys.argv[1:]:\n    torch.load(p, weights_only=False)\n"
    subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True, check=False, cwd=tmp_path)
    assert all((tmp_path / f"ran-{how}-{fmt}").exists() for how in PAYLOADS for fmt in FORMATS)


def test_keep_map_keeps_the_pneumonia_neuron_as_a_cxrtool_stage1_checkpoint_does(
    original: torch.nn.Module, txrv_file: Path, tmp_path: Path
) -> None:
    def stage2(spec: str) -> tuple[torch.nn.Module, object]:
        torch.manual_seed(7)
        model = build_model("densenet121", num_classes=3, in_chans=1)
        report = initialise(
            model,
            spec,
            arch="densenet121",
            class_names=COVID3,
            keep_neurons=True,
            keep_map={"viral_pneumonia": "Pneumonia"},
        )
        return model, report

    from_txrv, report = stage2(f"txrv:{txrv_file}")
    pneumonia = NIH.labels.index("Pneumonia")
    assert report.kept == [("viral_pneumonia", "Pneumonia")] and report.fresh == ["covid", "normal"]
    assert torch.equal(from_txrv.classifier.weight[2], original.classifier.weight[pneumonia])
    assert torch.equal(from_txrv.classifier.bias[2], original.classifier.bias[pneumonia])
    entry = report.lineage[0]
    assert entry["source"] == "torchxrayvision" and entry["file"] == NIH.filename
    assert entry["sha256"] == file_sha256(txrv_file) and entry["url"] == NIH.url
    # the same weights as a cxrtool stage-1 checkpoint give the same stage-2 start, tensor for tensor
    card = read_parent_card(f"txrv:{txrv_file}")
    ckpt = save_checkpoint(tmp_path / "stage1.safetensors", _imported(f"txrv:{txrv_file}"), card)
    assert read_card(ckpt).class_names == NIH14
    from_ckpt, _ = stage2(str(ckpt))
    a, b = from_txrv.state_dict(), from_ckpt.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # auto-detected without the txrv: prefix as well
    plain, plain_report = stage2(str(txrv_file))
    assert plain_report.source == "torchxrayvision"
    assert torch.equal(plain.classifier.weight, from_txrv.classifier.weight)


def test_missing_txrv_file_names_file_url_and_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(CxrError) as info:
        read_parent_card("txrv:densenet121-res224-nih")
    msg = str(info.value)
    assert NIH.url in msg and str(tmp_path / ".torchxrayvision" / "models_data" / NIH.filename) in msg
    with pytest.raises(CxrError, match=f"published at {NIH.url}"):
        read_parent_card(f"txrv:{tmp_path / NIH.filename}")


def test_non_txrv_file_under_txrv_prefix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(build_model("densenet121", num_classes=2).state_dict(), path)
    with pytest.raises(CxrError, match="not a torchxrayvision DenseNet file"):
        read_parent_card(f"txrv:{path}")


def test_renamed_file_needs_its_output_names(txrv_file: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "mine.pt"
    renamed.write_bytes(txrv_file.read_bytes())
    with pytest.raises(CxrError, match="does not name its 18 outputs"):
        read_parent_card(f"txrv:{renamed}")
    card = read_parent_card(f"txrv:{renamed}", [n or "-" for n in NIH.labels])  # as --init-classes gives them
    assert card is not None and card.class_names == NIH14


def test_stage2_with_neuron_keeping_runs_end_to_end(txrv_file: Path, covid_small: Path, tmp_path: Path) -> None:
    from cxrtool.train.config import TrainConfig
    from cxrtool.train.events import InitDone
    from cxrtool.train.loop import fit

    events = []
    cfg = TrainConfig(
        manifest=str(covid_small),
        out_dir=str(tmp_path / "s2"),
        init=f"txrv:{txrv_file}",
        keep_neurons=True,
        keep_map={"viral_pneumonia": "Pneumonia"},
        input_size=32,
        epochs=1,
        batch_size=12,
        workers=0,
        device="cpu",
        trust=False,
    )
    result = fit(cfg, on_event=events.append)
    assert result.status == "completed"
    init = next(e for e in events if isinstance(e, InitDone)).report
    assert init.kept == [("viral_pneumonia", "Pneumonia")]
    model, card = load_checkpoint(tmp_path / "s2" / "best.safetensors")
    assert card.class_names == COVID3 and card.preprocess.channels == 1
    assert (card.preprocess.mean, card.preprocess.std, card.preprocess.input_size) == ((TXRV_MEAN,), (TXRV_STD,), 32)
    assert card.lineage[0]["source"] == "torchxrayvision" and card.lineage[0]["sha256"] == file_sha256(txrv_file)
    assert model.features.conv0.weight.shape[1] == 1


@pytest.mark.parametrize("zipped", [True, False])
def test_views_and_dtypes_read_as_torch_load_reads_them(zipped: bool, tmp_path: Path) -> None:
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    saved = {
        "base": base,
        "t": base.t(),
        "slice": base[1:, 2:],
        "long": torch.tensor([1, -2]),
        "bool": torch.tensor([True]),
        "half": torch.ones(2, dtype=torch.float16),
        "scalar": torch.tensor(3.5),
        "param": torch.nn.Parameter(torch.ones(3)),
    }
    path = tmp_path / "views.pt"
    torch.save(saved, path, _use_new_zipfile_serialization=zipped)
    got = read_torch_file(path)
    for key, want in saved.items():
        assert got[key].dtype == want.dtype and got[key].stride() == want.stride() and torch.equal(got[key], want), key
        assert type(got[key]) is torch.Tensor  # a Parameter comes back as its data


class _ViewPastStorage:
    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, (torch.zeros(4)._typed_storage(), 0, (100,), (1,), False, {}))


def test_tensor_view_past_its_storage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.pt"
    torch.save({"w": _ViewPastStorage()}, path)
    with pytest.raises(UnsafePickleError, match="view runs past its storage"):
        read_torch_file(path)
