"""Foundation: preprocessing config, the shared loader, manifests, model head, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cxrtool.config import PreprocessCfg, resolve_preprocess
from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.images import load_image
from cxrtool.inputs import iter_input_files
from cxrtool.manifest import read_manifest, write_manifest
from cxrtool.modelfile import ModelCard, read_card
from cxrtool.models import build_model
from cxrtool.models.checkpoint import load_checkpoint, save_checkpoint
from cxrtool.preprocess import normalize, resize_gray, to_model_input


class TestPreprocessCfg:
    def test_json_roundtrip(self):
        cfg = PreprocessCfg(input_size=64, channels=1, mean=(0.5,), std=(0.25,), resize="letterbox")
        assert PreprocessCfg.from_json(cfg.to_json()) == cfg

    def test_resolve_precedence(self):
        stored = PreprocessCfg(input_size=128, resize="center_crop")
        cfg = resolve_preprocess(stored, {"input_size": 64, "resize": None})
        assert cfg.input_size == 64 and cfg.resize == "center_crop"

    def test_channel_override_resets_stats(self):
        cfg = resolve_preprocess(PreprocessCfg(), {"channels": 1})
        assert cfg.channels == 1 and len(cfg.mean) == 1

    def test_zbox_bounds(self):
        low, high = PreprocessCfg(channels=1, mean=(0.5,), std=(0.25,)).input_bounds()
        assert low == (-2.0,) and high == (2.0,)

    def test_rejects_bad_values(self):
        with pytest.raises(ValueError):
            PreprocessCfg(channels=2)


class TestPreprocess:
    def test_normalize_values(self):
        gray = np.full((8, 8), 0.5, np.float32)
        cfg = PreprocessCfg(input_size=8, channels=3, mean=(0.5, 0.25, 0.0), std=(1.0, 0.5, 0.25))
        x = normalize(gray, cfg)
        assert x.shape == (3, 8, 8)
        np.testing.assert_allclose(x[:, 0, 0], [0.0, 0.5, 2.0])

    @pytest.mark.parametrize("mode", ["stretch", "letterbox", "center_crop"])
    def test_resize_shape_and_range(self, gradient_image, mode):
        out = resize_gray(gradient_image, PreprocessCfg(input_size=32, resize=mode))
        assert out.shape == (32, 32) and out.min() >= 0 and out.max() <= 1

    def test_letterbox_pads_black_and_keeps_aspect(self, gradient_image):
        out = resize_gray(gradient_image, PreprocessCfg(input_size=30, resize="letterbox"))
        assert out[:4].max() == 0 and out[-4:].max() == 0  # 40x60 -> 20x30 centred: 5 rows pad each side
        assert out[6:24].mean() > 0.3

    def test_stretch_preserves_mean(self, gradient_image):
        out = resize_gray(gradient_image, PreprocessCfg(input_size=20))
        assert abs(out.mean() - gradient_image.mean()) < 0.02

    def test_full(self, gradient_image):
        cfg = PreprocessCfg(input_size=16)
        x = to_model_input(gradient_image, cfg)
        assert x.dtype == np.float32 and x.shape == (3, 16, 16)
        # every channel is the resized film, standardised with that channel's own mean and std
        gray = resize_gray(gradient_image, cfg)
        for c, (mean, std) in enumerate(zip(cfg.mean, cfg.std)):
            np.testing.assert_allclose(x[c], (gray - mean) / std, rtol=1e-5, atol=1e-6)


class TestLoader:
    @pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "CMYK", "P", "1", "I;16", "I", "F", "LA"])
    def test_pil_modes(self, tmp_path, mode):
        base = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
        im = Image.fromarray(base, "L")
        if mode == "I;16":
            im = Image.fromarray(base.astype(np.uint16) * 257)
        elif mode in ("I", "F"):
            im = (
                Image.fromarray(base.astype(np.int32) * 257)
                if mode == "I"
                else Image.fromarray(base.astype(np.float32) / 255)
            )
        else:
            im = im.convert(mode)
        suffix = ".tiff" if mode in ("CMYK", "I", "F", "LA") else ".png"
        p = tmp_path / f"img{suffix}"
        im.save(p)
        arr = load_image(p)
        assert arr.shape == (8, 8) and arr.dtype == np.float32
        if mode != "1":
            np.testing.assert_allclose(arr, base / 255.0, atol=0.02)
        else:
            assert set(np.unique(arr)) <= {0.0, 1.0}

    def test_sixteen_bit_precision(self, tmp_path):
        data = np.array([[0, 1, 65534, 65535]], dtype=np.uint16)
        Image.fromarray(data).save(tmp_path / "a.png")
        arr = load_image(tmp_path / "a.png")
        assert arr[0, 1] > 0 and arr[0, 1] < 1 / 255  # not quantised to 8 bits
        assert arr[0, 3] == 1.0

    def test_empty_file(self, tmp_path):
        (tmp_path / "x.png").write_bytes(b"")
        with pytest.raises(ImageLoadError, match="x.png: empty file"):
            load_image(tmp_path / "x.png")

    def test_not_an_image(self, tmp_path):
        (tmp_path / "x.jpg").write_text("hello, I am text" * 20)
        with pytest.raises(ImageLoadError, match="not a DICOM or a readable image"):
            load_image(tmp_path / "x.jpg")

    def test_truncated(self, tmp_path):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(tmp_path / "a.png")
        data = (tmp_path / "a.png").read_bytes()
        (tmp_path / "b.png").write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageLoadError, match="b.png"):
            load_image(tmp_path / "b.png")

    def test_iter_input_files(self, tmp_path):
        # created in reverse order, so a walk in creation (or inode) order would not pass
        for name in ("z/y.png", "a/x.dcm", "a/w", "a/.hidden", "c.jpg", "b.png", "notes.csv", ".git/config"):
            (tmp_path / name).parent.mkdir(exist_ok=True)
            (tmp_path / name).write_bytes(b"1")
        got = [p.relative_to(tmp_path).as_posix() for p in iter_input_files([tmp_path])]
        # sorted: a folder's files by name, then its subfolders by name; hidden files and sidecars left out
        assert got == ["b.png", "c.jpg", "a/w", "a/x.dcm", "z/y.png"]


class TestManifest:
    def test_multiclass_roundtrip(self, tmp_path):
        rows = [
            {"path": "a.png", "label": "covid", "split": "train", "group": "p1", "source": "t", "note": "x"},
            {"path": "/abs/b.png", "label": "normal", "split": "val", "group": "p2", "source": "t", "note": ""},
        ]
        write_manifest(tmp_path / "m.csv", rows, extra_columns=["note"])
        m = read_manifest(tmp_path / "m.csv")
        assert m.task.name == "multiclass" and m.class_names == ["covid", "normal"]
        assert m.resolve(m.rows[0]) == tmp_path.resolve() / "a.png"
        assert str(m.resolve(m.rows[1])) == "/abs/b.png"
        assert [r["path"] for r in m.select("val").rows] == ["/abs/b.png"]
        assert m.rows[0]["note"] == "x"

    def test_multilabel(self, tmp_path):
        rows = [{"path": "a.png", "label": "B", "y:A": 0, "y:B": 1, "y:C": 0}]
        write_manifest(tmp_path / "m.csv", rows, extra_columns=["y:A", "y:B", "y:C"])
        m = read_manifest(tmp_path / "m.csv")
        assert m.task.name == "multilabel" and m.class_names == ["A", "B", "C"]
        assert m.multi_hot(m.rows[0]) == [0.0, 1.0, 0.0]

    def test_not_a_manifest(self, tmp_path):
        (tmp_path / "m.csv").write_text("a,b\n1,2\n")
        with pytest.raises(CxrError, match="missing columns: path, label"):
            read_manifest(tmp_path / "m.csv")


class TestModel:
    @torch.no_grad()
    def test_module_head_matches_torchvision(self):
        from torchvision.models import densenet121

        torch.manual_seed(0)
        tv = densenet121(weights=None, num_classes=3).eval()
        ours = build_model("densenet121", num_classes=3).eval()
        ours.load_state_dict(tv.state_dict(), strict=True)  # same parameter names
        x = torch.randn(2, 3, 64, 64)
        torch.testing.assert_close(ours(x), tv(x))
        kinds = [type(m).__name__ for m in list(ours.children())[1:]]
        assert kinds == ["ReLU", "AdaptiveAvgPool2d", "Flatten", "Linear"]

    def test_checkpoint_roundtrip_and_strict(self, tmp_path):
        torch.manual_seed(0)
        model = build_model("densenet121", num_classes=3, in_chans=1).eval()
        card = ModelCard(
            arch="densenet121",
            task="multiclass",
            class_names=["a", "b", "c"],
            preprocess=PreprocessCfg(input_size=32, channels=1, mean=(0.5,), std=(0.25,)),
        )
        path = save_checkpoint(tmp_path / "m.safetensors", model, card)
        loaded, card2 = load_checkpoint(path)
        assert card2.class_names == ["a", "b", "c"] and card2.preprocess == card.preprocess
        x = torch.randn(1, 1, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x))
        assert read_card(path).arch == "densenet121"
        # a card claiming 4 classes for 3-class weights must fail strictly, not load a random head
        from safetensors.torch import load_file, save_file

        bad = ModelCard(arch="densenet121", task="multiclass", class_names=list("abcd"), preprocess=card.preprocess)
        save_file(
            load_file(str(path)),
            str(tmp_path / "bad.safetensors"),
            metadata={"format": "cxrtool-checkpoint/1", "card": bad.to_json()},
        )
        with pytest.raises(CxrError, match="shape mismatch keys: classifier.bias"):
            load_checkpoint(tmp_path / "bad.safetensors")
