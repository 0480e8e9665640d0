"""--init: ImageNet from the hub cache, foreign (CheXNet-style) state dicts, strict loading, neuron keeping."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torchvision

from cxrtool.errors import CxrError
from cxrtool.modelfile import ModelCard, file_sha256
from cxrtool.models import build_model
from cxrtool.models.checkpoint import save_checkpoint
from cxrtool.models.densenet import DenseNetClassifier
from cxrtool.models.pretrained import (
    imagenet_weights_file,
    initialise,
    keep_output_neurons,
    load_foreign_state,
    remap_keys,
)

OLD = ["Atelectasis", "Pneumonia", "Edema"]


def tiny(num_classes: int, seed: int = 0) -> DenseNetClassifier:
    """torchvision's DenseNet layout (denselayer keys included) at toy size: fast plumbing tests."""
    torch.manual_seed(seed)
    return build_model("densenet_tiny", num_classes=num_classes)


def old_style(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Key names as in torchvision's pre-0.4 DenseNet files (``norm.1``) without num_batches_tracked."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        for part in ("norm", "relu", "conv"):
            for i in ("1", "2"):
                k = k.replace(f".{part}{i}.", f".{part}.{i}.")
        out[k] = v
    return out


def test_imagenet_missing_file_says_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth"
    with pytest.raises(CxrError) as info:
        initialise(tiny(3), "imagenet", arch="densenet121", class_names=["a", "b", "c"])
    msg = str(info.value)
    assert str(expected) in msg
    assert "https://download.pytorch.org/models/densenet121-a639ec97.pth" in msg


def test_imagenet_loads_from_hub_cache_and_adapts_grey_stem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    tv = torchvision.models.densenet121(weights=None)  # random stand-in with the real file's layout
    file = imagenet_weights_file("densenet121")
    file.parent.mkdir(parents=True)
    torch.save(old_style(tv.state_dict()), file)

    model = build_model("densenet121", num_classes=2, in_chans=1)
    report = initialise(model, "imagenet", arch="densenet121", class_names=["x", "y"])
    got = model.state_dict()
    ref = tv.state_dict()
    assert torch.equal(
        got["features.denseblock2.denselayer3.norm1.weight"], ref["features.denseblock2.denselayer3.norm1.weight"]
    )
    assert torch.equal(got["features.norm5.running_var"], ref["features.norm5.running_var"])
    assert torch.allclose(got["features.conv0.weight"], ref["features.conv0.weight"].sum(1, keepdim=True))
    assert got["classifier.weight"].shape == (2, 1024) and torch.count_nonzero(got["classifier.bias"]) == 0
    assert report.lineage[0]["sha256"] == file_sha256(file)
    assert report.fresh == ["x", "y"] and any("input channels" in n for n in report.notes)


def _chexnet_file(path: Path, model: DenseNetClassifier) -> Path:
    """CheXNet's layout: DataParallel ``module.``, ``densenet121.`` wrapper, Sequential head, old keys."""
    state = {}
    for k, v in old_style(model.state_dict()).items():
        k = k.replace("classifier.", "classifier.0.")
        state[f"module.densenet121.{k}"] = v
    torch.save({"epoch": 3, "arch": "densenet121", "state_dict": state}, path)
    return path


def test_chexnet_style_state_dict_with_neuron_keeping(tmp_path: Path) -> None:
    parent = tiny(len(OLD), seed=1)
    file = _chexnet_file(tmp_path / "model.pth.tar", parent)
    child = tiny(3, seed=2)
    fresh_before = child.classifier.weight[1].clone()
    report = initialise(
        child,
        str(file),
        arch="densenet121",
        class_names=["covid", "normal", "viral_pneumonia"],
        keep_neurons=True,
        keep_map={"viral_pneumonia": "pneumonia"},
        init_classes=OLD,
    )
    for k, v in parent.features.state_dict().items():
        assert torch.equal(child.features.state_dict()[k], v), k
    assert report.kept == [("viral_pneumonia", "Pneumonia")]
    assert report.fresh == ["covid", "normal"]
    assert torch.equal(child.classifier.weight[2], parent.classifier.weight[1])
    assert torch.equal(child.classifier.bias[2], parent.classifier.bias[1])
    assert torch.equal(child.classifier.weight[1], fresh_before)


def test_keep_neurons_by_name_from_cxrtool_checkpoint(tmp_path: Path) -> None:
    parent = tiny(len(OLD), seed=3)
    ckpt = save_checkpoint(tmp_path / "s1.safetensors", parent, ModelCard("densenet121", "multilabel", OLD))
    child = tiny(2, seed=4)
    report = initialise(child, str(ckpt), arch="densenet121", class_names=["edema", "other"], keep_neurons=True)
    assert report.kept == [("edema", "Edema")]
    assert torch.equal(child.classifier.weight[0], parent.classifier.weight[2])
    assert report.lineage[0]["sha256"] == file_sha256(ckpt) and report.lineage[0]["class_names"] == OLD
    # without --keep-neurons the head stays fresh
    plain = tiny(2, seed=4)
    assert initialise(plain, str(ckpt), arch="densenet121", class_names=["edema", "other"]).kept == []
    assert not torch.equal(plain.classifier.weight[0], parent.classifier.weight[2])


def test_checkpoint_arch_must_match(tmp_path: Path) -> None:
    ckpt = save_checkpoint(
        tmp_path / "s1.safetensors", tiny(3), ModelCard("densenet201", "multiclass", ["a", "b", "c"])
    )
    with pytest.raises(CxrError, match="checkpoint is densenet201"):
        initialise(tiny(3), str(ckpt), arch="densenet121", class_names=["a", "b", "c"])


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda s: s.pop("features.norm5.weight"), "missing keys: features.norm5.weight"),
        (lambda s: s.__setitem__("features.extra.weight", torch.zeros(1)), "unexpected keys: features.extra.weight"),
        (lambda s: s.__setitem__("classifier.2.weight", torch.zeros(1)), "unexpected head keys"),
    ],
)
def test_strict_loading_names_the_bad_key(tmp_path: Path, edit, expected: str) -> None:
    state = tiny(3).state_dict()
    edit(state)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(CxrError, match=expected):
        initialise(tiny(3), str(tmp_path / "w.pt"), arch="densenet121", class_names=["a", "b", "c"])


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_foreign_file_is_loaded_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": _Evil()}, protocol=2))
    with pytest.raises(CxrError, match="refused to call builtins.print"):
        load_foreign_state(path)


def test_remap_rejects_colliding_keys() -> None:
    with pytest.raises(CxrError, match="two keys"):
        remap_keys({"module.features.conv0.weight": torch.zeros(1), "features.conv0.weight": torch.zeros(1)})


def test_keep_map_errors_name_the_class() -> None:
    head = tiny(2).classifier
    w, b = torch.zeros(3, head.in_features), torch.zeros(3)
    with pytest.raises(CxrError, match="'flu' is not one of the new classes"):
        keep_output_neurons(head, w, b, old_names=OLD, new_names=["a", "b"], keep_map={"flu": "Edema"})
    with pytest.raises(CxrError, match="'Flu' is not one of the old classes"):
        keep_output_neurons(head, w, b, old_names=OLD, new_names=["a", "b"], keep_map={"a": "Flu"})


def test_keep_neurons_needs_a_checkpoint() -> None:
    with pytest.raises(CxrError, match="needs --init to be a checkpoint"):
        initialise(tiny(2), "none", arch="densenet121", class_names=["a", "b"], keep_neurons=True)


def test_imagenet_from_timm_safetensors_in_the_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    from cxrtool.models.catalog import KNOWN

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no torchvision file: the timm one is used
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(CxrError) as info:
        initialise(tiny(3), "imagenet", arch="densenet121", class_names=["a", "b", "c"])
    timm = KNOWN["timm:densenet121.tv_in1k"]
    msg = str(info.value)
    assert timm.url in msg and str(tmp_path / "hf" / "hub" / "models--timm--densenet121.tv_in1k") in msg
    torch.manual_seed(2)
    tv = torchvision.models.densenet121(weights=None)
    file = tmp_path / "hf" / "hub" / "models--timm--densenet121.tv_in1k" / "snapshots" / "0123abc" / "model.safetensors"
    file.parent.mkdir(parents=True)
    # timm's file: torchvision's names, no num_batches_tracked (timm drops nothing else for DenseNet)
    save_file({k: v for k, v in tv.state_dict().items() if not k.endswith("num_batches_tracked")}, str(file))
    model = build_model("densenet121", num_classes=2)
    report = initialise(model, "imagenet", arch="densenet121", class_names=["x", "y"])
    ref = tv.state_dict()
    assert all(torch.equal(model.state_dict()[k], ref[k]) for k in ref if not k.startswith("classifier"))
    assert report.lineage[0]["weights"] == "timm:densenet121.tv_in1k"
    assert report.lineage[0]["sha256"] == file_sha256(file)


def test_doctor_lists_known_weight_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrtool.envinfo import _weight_rows
    from cxrtool.models.catalog import KNOWN

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    nih = KNOWN["densenet121-res224-nih"]
    (tmp_path / ".torchxrayvision" / "models_data").mkdir(parents=True)
    (tmp_path / ".torchxrayvision" / "models_data" / nih.filename).write_bytes(b"x")
    rows = {item: (value, ok) for item, value, ok in _weight_rows()}
    found = tmp_path / ".torchxrayvision" / "models_data" / nih.filename
    assert rows["txrv:densenet121-res224-nih"] == (str(found), True)
    value, ok = rows["imagenet (torchvision:densenet121)"]
    assert ok is None and str(tmp_path / "torch" / "hub" / "checkpoints") in value
    assert KNOWN["torchvision:densenet121"].url in value
