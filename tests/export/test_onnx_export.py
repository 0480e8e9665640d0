"""ONNX export: dynamic batch, card in metadata, parity on real films, ONNX Runtime / OpenVINO backends, auto."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError
from cxrtool.export.onnx import export_onnx
from cxrtool.export.parity import ParityError, _spread, load_check_batch
from cxrtool.infer.loading import available_backends, load_backend
from cxrtool.infer.openvino_backend import compile_config
from cxrtool.modelfile import SOURCE_SHA_KEY, file_sha256, read_card, read_onnx_card, read_onnx_metadata
from cxrtool.models.checkpoint import load_checkpoint

from .conftest import SIZE, make_checkpoint


def torch_logits(checkpoint: Path, batch: np.ndarray) -> np.ndarray:
    model, _ = load_checkpoint(checkpoint)
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy()


class TestExport:
    def test_cli_reports_parity_on_real_films(self, cli_export, onnx_file):
        assert "wrote" in cli_export.output and str(onnx_file.name) in cli_export.output
        assert "6 real" in cli_export.output

    def test_batch_axis_is_dynamic(self, onnx_file):
        (inp,) = onnx.load(str(onnx_file)).graph.input
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].HasField("dim_value")
        assert [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]

    def test_card_and_source_hash_travel_in_metadata(self, onnx_file, checkpoint):
        assert read_onnx_card(onnx_file) == read_card(checkpoint)
        assert read_onnx_metadata(onnx_file)[SOURCE_SHA_KEY] == file_sha256(checkpoint)

    def test_parity_failure_writes_nothing(self, onnx_file, tmp_path, monkeypatch, shared_data):
        # A checkpoint with other weights "exported" to the first model's graph: parity must catch it.
        other = make_checkpoint(tmp_path / "other.safetensors", seed=1)
        monkeypatch.setattr("cxrtool.export.onnx._to_onnx_proto", lambda *a: onnx.load(str(onnx_file)))
        out = tmp_path / "engines" / "other.onnx"
        with pytest.raises(ParityError, match="max abs logit difference"):
            export_onnx(other, out, check_images=[shared_data / "covid3"], check_count=3)
        assert list(out.parent.iterdir()) == []  # neither the file nor a temp file is left


class TestOnnxBackends:
    def test_onnxruntime_matches_torch_on_real_films(self, onnx_file, checkpoint, real_batch):
        backend = load_backend(onnx_file, backend="onnxruntime", threads=1)
        expected = torch_logits(checkpoint, real_batch)
        np.testing.assert_allclose(backend.run(real_batch), expected, atol=1e-4)
        np.testing.assert_allclose(backend.run(real_batch[:1]), expected[:1], atol=1e-4)
        assert backend.card.class_names == ["covid", "normal", "viral_pneumonia"]
        assert backend.describe()["threads"] == 1

    def test_openvino_f32_matches_torch_on_real_films(self, onnx_file, checkpoint, real_batch):
        backend = load_backend(onnx_file, backend="openvino", precision="f32")
        assert backend.describe()["precision"] == "f32"
        np.testing.assert_allclose(backend.run(real_batch), torch_logits(checkpoint, real_batch), atol=1e-3)

    def test_openvino_throughput_hint_keeps_order(self, onnx_file, real_batch):
        latency = load_backend(onnx_file, backend="openvino", precision="f32")
        throughput = load_backend(onnx_file, backend="openvino", precision="f32", hint="throughput")
        np.testing.assert_allclose(throughput.run(real_batch), latency.run(real_batch), atol=1e-4)


class TestOpenVINOConfig:
    def test_auto_uses_bf16_only_where_supported(self):
        assert compile_config("auto", "latency", None, bf16_supported=True)["INFERENCE_PRECISION_HINT"] == "bf16"
        assert compile_config("auto", "latency", None, bf16_supported=False)["INFERENCE_PRECISION_HINT"] == "f32"
        assert compile_config("f32", "throughput", 2, bf16_supported=True) == {
            "INFERENCE_PRECISION_HINT": "f32",
            "PERFORMANCE_HINT": "THROUGHPUT",
            "INFERENCE_NUM_THREADS": 2,
        }

    def test_bf16_demanded_on_cpu_without_it_is_an_error(self):
        with pytest.raises(CxrError, match="no bf16 support"):
            compile_config("bf16", "latency", None, bf16_supported=False)

    @pytest.mark.parametrize("precision, hint", [("fp8", "latency"), ("f32", "fast")])
    def test_bad_values(self, precision, hint):
        with pytest.raises(CxrError):
            compile_config(precision, hint, None, bf16_supported=True)


class TestAuto:
    def test_checkpoint_with_current_export_runs_an_export_on_cpu(self, onnx_file, checkpoint, tmp_path, monkeypatch):
        from cxrtool.cpu import cpu_flags
        from cxrtool.infer.auto import CACHE_ENV
        from cxrtool.modelfile import default_int8_path

        monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # no speed measurement here: CPU flags decide
        assert set(available_backends(checkpoint, "cpu")) == {"openvino", "onnxruntime", "torch"}
        backend = load_backend(checkpoint)
        int8 = default_int8_path(checkpoint)  # written by test_int8.py when it ran first
        assert backend.path == (int8 if int8.is_file() and "avx2" in cpu_flags() else onnx_file)
        assert "no bench measurement here" in backend.describe()["choice"]
        assert load_backend(checkpoint, backend="onnxruntime").path == onnx_file
        assert load_backend(checkpoint, backend="openvino").path == onnx_file  # explicit openvino: the fp32 export

    def test_stale_export_is_never_used(self, onnx_file, tmp_path):
        ckpt = make_checkpoint(tmp_path / "tiny.safetensors", seed=2)  # same name, other weights
        (tmp_path / "engines").mkdir()
        shutil.copy(onnx_file, tmp_path / "engines" / "tiny.onnx")
        assert available_backends(ckpt, "cpu") == ["torch"]
        assert load_backend(ckpt).name == "torch"
        with pytest.raises(CxrError, match="different version of tiny.safetensors; export it again"):
            load_backend(ckpt, backend="onnxruntime")

    def test_checkpoint_without_export_asks_for_one(self, tmp_path):
        ckpt = make_checkpoint(tmp_path / "m.safetensors", seed=0)
        with pytest.raises(CxrError, match="run `cxrtool export` on it first"):
            load_backend(ckpt, backend="openvino")

    def test_onnx_file_never_falls_back_to_torch(self, onnx_file):
        assert set(available_backends(onnx_file, "cpu")) == {"openvino", "onnxruntime"}


class TestOnnxCard:
    def test_onnx_without_card(self, tmp_path):
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "g",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
        path = tmp_path / "plain.onnx"
        onnx.save(onnx.helper.make_model(graph), str(path))
        with pytest.raises(CxrError, match="without a cxrtool model card"):
            read_onnx_card(path)
        with pytest.raises(CxrError, match="without a cxrtool model card"):
            load_backend(path, backend="onnxruntime")

    def test_garbage_file(self, tmp_path):
        path = tmp_path / "junk.onnx"
        path.write_bytes(b"\x00\xffnot a protobuf" * 10)
        with pytest.raises(CxrError, match="junk.onnx: not a readable ONNX file"):
            read_onnx_card(path)


class TestCheckBatch:
    def test_spread_takes_both_ends_then_the_rest(self):
        assert _spread(10, 3) == [0, 4, 9, 1, 2, 3, 5, 6, 7, 8]
        assert _spread(2, 5) == [0, 1]

    def test_skips_bad_files_and_preprocesses_like_inference(self, tmp_path):
        from PIL import Image

        Image.fromarray(np.full((20, 30), 255, np.uint8)).save(tmp_path / "a.png")
        (tmp_path / "b.png").write_bytes(b"")
        Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "c.png")
        cfg = PreprocessCfg(input_size=8, channels=1, mean=(0.5,), std=(0.25,))
        batch, skipped = load_check_batch([tmp_path], cfg, limit=3)  # 3 files, one bad: 2 films
        assert batch.shape == (2, 1, 8, 8) and batch.dtype == np.float32
        np.testing.assert_allclose(batch[0], 2.0)  # white: (1 - 0.5) / 0.25
        np.testing.assert_allclose(batch[1], -2.0)  # black
        assert len(skipped) == 1 and "b.png" in skipped[0] and "empty" in skipped[0]

    def test_nothing_loadable(self, tmp_path):
        (tmp_path / "x.png").write_bytes(b"nope")
        with pytest.raises(CxrError, match="no loadable image"):
            load_check_batch([tmp_path], PreprocessCfg(input_size=8), limit=2)
