"""TensorRT: sidecar, compatibility and chunking are plain Python and tested here; the build and runtime
calls are driven by fake 10.x/11.x bindings in test_trt_fakes.py; a real engine needs a GPU (marked ``gpu``)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import types

import numpy as np
import pytest

from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError
from cxrtool.infer.loading import load_backend
from cxrtool.infer.trt_backend import TensorRTBackend
from cxrtool.modelfile import (
    BatchProfile,
    EngineSidecar,
    ModelCard,
    check_compatible,
    default_engine_path,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from cxrtool.modelfile.loaded import open_model
from cxrtool.runtimes.trt_runner import plan_chunks
from cxrtool.runtimes.trtlib import cuda_index

HAS_TRT = all(importlib.util.find_spec(m) is not None for m in ("tensorrt", "pycuda"))


def sidecar(**changes) -> EngineSidecar:
    values = dict(
        card=ModelCard(
            arch="densenet121", task="multiclass", class_names=["a", "b"], preprocess=PreprocessCfg(input_size=32)
        ),
        precision="fp16",
        profile=BatchProfile(1, 8, 16),
        input_name="input",
        output_name="logits",
        tensorrt_version="10.3.0",
        gpu_name="NVIDIA A100-SXM4-80GB",
        compute_capability="8.0",
        engine_sha256="e" * 64,
        source_onnx="m.onnx",
        source_onnx_sha256="o" * 64,
        source_checkpoint_sha256="c" * 64,
    )
    values.update(changes)
    return EngineSidecar(**values)


class TestOptions:
    @pytest.mark.parametrize("lo, opt, hi", [(0, 1, 1), (4, 2, 8), (1, 16, 8)])
    def test_bad_profile(self, lo, opt, hi):
        with pytest.raises(CxrError, match="1 <= min <= opt <= max"):
            BatchProfile(lo, opt, hi)

    def test_cuda_index(self):
        assert cuda_index("cuda") == 0 and cuda_index("cuda:3") == 3
        for bad in ("cpu", "cuda:x", "gpu:0"):
            with pytest.raises(CxrError, match="needs a CUDA device"):
                cuda_index(bad)

    def test_default_paths(self, tmp_path):
        assert default_engine_path(tmp_path / "m.safetensors") == tmp_path / "engines" / "m.engine"
        assert default_engine_path(tmp_path / "x" / "m.onnx") == tmp_path / "x" / "m.engine"
        assert sidecar_path(tmp_path / "m.engine") == tmp_path / "m.engine.json"


class TestSidecar:
    def test_roundtrip(self, tmp_path):
        engine = tmp_path / "m.engine"
        written = sidecar()  # one object: two would differ in their creation seconds across a second boundary
        write_sidecar(engine, written)
        assert read_sidecar(engine) == written
        assert json.loads(sidecar_path(engine).read_text())["card"]["class_names"] == ["a", "b"]

    def test_missing_damaged_or_foreign(self, tmp_path):
        engine = tmp_path / "m.engine"
        with pytest.raises(CxrError, match="sidecar m.engine.json is missing; rebuild"):
            read_sidecar(engine)
        sidecar_path(engine).write_text("{not json")
        with pytest.raises(CxrError, match="unreadable engine sidecar"):
            read_sidecar(engine)
        sidecar_path(engine).write_text(json.dumps({"format": "something-else/1"}))
        with pytest.raises(CxrError, match="unreadable engine sidecar"):
            read_sidecar(engine)

    def test_matches_source(self, tmp_path):
        engine = tmp_path / "m.engine"
        write_sidecar(engine, sidecar())
        engine.write_bytes(b"plan")
        opened = open_model(engine)
        assert opened.made_from("c" * 64) and opened.made_from("o" * 64)
        assert not opened.made_from("x" * 64)


class TestCompatibility:
    HERE = dict(tensorrt_version="10.3.0", gpu_name="NVIDIA A100-SXM4-80GB", compute_capability="8.0")

    def test_same_machine_passes(self):
        check_compatible(sidecar(), "m.engine", **self.HERE, engine_sha256="e" * 64)

    @pytest.mark.parametrize(
        "change, shown",
        [
            ({"tensorrt_version": "10.5.0"}, "TensorRT 10.5.0"),
            ({"gpu_name": "NVIDIA L4", "compute_capability": "8.9"}, "NVIDIA L4 (compute 8.9)"),
            ({"compute_capability": "9.0"}, "compute 9.0"),
        ],
    )
    def test_other_machine_says_rebuild(self, change, shown):
        with pytest.raises(CxrError) as info:
            check_compatible(sidecar(), "m.engine", **{**self.HERE, **change})
        message = str(info.value)
        assert "built for TensorRT 10.3.0 on NVIDIA A100-SXM4-80GB (compute 8.0)" in message
        assert shown in message and "rebuild the engine on this machine: cxrtool export --trt m.onnx" in message

    def test_engine_replaced_behind_the_sidecar(self):
        with pytest.raises(CxrError, match="does not match its sidecar"):
            check_compatible(sidecar(), "m.engine", **self.HERE, engine_sha256="f" * 64)

    def test_backend_load_refuses_before_deserialising(self, tmp_path, monkeypatch):
        engine = tmp_path / "m.engine"
        engine.write_bytes(b"plan")
        write_sidecar(engine, sidecar(engine_sha256=hashlib.sha256(b"plan").hexdigest()))
        monkeypatch.setattr(
            "cxrtool.infer.trt_backend.import_tensorrt", lambda: types.SimpleNamespace(__version__="10.7.0")
        )
        monkeypatch.setattr("cxrtool.infer.trt_backend.current_gpu", lambda index: ("NVIDIA H100 80GB HBM3", "9.0"))
        with pytest.raises(
            CxrError, match="this machine has TensorRT 10.7.0 on NVIDIA H100 80GB HBM3 .compute 9.0.; rebuild"
        ):
            TensorRTBackend.load(open_model(engine), device="cuda")


class TestChunks:
    def test_split_at_max(self):
        assert plan_chunks(70, 1, 32) == [(0, 32, 32), (32, 64, 32), (64, 70, 6)]

    def test_pad_to_min(self):
        assert plan_chunks(2, 4, 8) == [(0, 2, 4)]
        assert plan_chunks(0, 1, 8) == []


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_backend_unavailable_without_tensorrt(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_sidecar(engine, sidecar(engine_sha256=hashlib.sha256(b"plan").hexdigest()))  # a well-formed engine file
    assert not TensorRTBackend.is_available("cuda")
    with pytest.raises(CxrError, match="backend 'tensorrt' is not available on cuda"):
        load_backend(engine, backend="tensorrt", device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT/pycuda not installed (pip install 'cxrtool[trt]' on a CUDA machine)")
@pytest.mark.parametrize("fp16", [False, True])
def test_build_and_run_engine(onnx_file, real_batch, tmp_path, fp16):
    from cxrtool.export.pipeline import build_engine

    built = build_engine(
        onnx_file, tmp_path / "tiny.engine", precision="fp16" if fp16 else "fp32", profile=BatchProfile(1, 4, 8)
    )
    assert built.parity.ok and read_sidecar(built.path).precision == ("fp16" if fp16 else "fp32")
    backend = load_backend(built.path, backend="tensorrt", device="cuda")
    onnx_backend = load_backend(onnx_file, backend="onnxruntime")
    np.testing.assert_allclose(backend.run(real_batch), onnx_backend.run(real_batch), atol=0.1 if fp16 else 1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT/pycuda not installed (pip install 'cxrtool[trt]' on a CUDA machine)")
def test_real_engine_gives_the_ood_features_of_onnx_runtime(onnx_file, real_batch, tmp_path):
    """A real fp32 engine: same features as ONNX Runtime, so the same OOD score and flag per film."""
    from cxrtool.export.pipeline import build_engine
    from cxrtool.infer.batching import predict_batch
    from cxrtool.trust import Trust
    from cxrtool.trust.ood import fit_ood

    built = build_engine(onnx_file, tmp_path / "tiny.engine", profile=BatchProfile(1, 4, 8))
    trt_backend = load_backend(built.path, backend="tensorrt", device="cuda")
    ort_backend = load_backend(onnx_file, backend="onnxruntime")
    x = np.asarray(real_batch, dtype=np.float32)
    noise = np.random.default_rng(0).normal(size=(12, *x.shape[1:])).astype(np.float32)
    _, ref_features = ort_backend.run_features(np.concatenate([x, noise]))
    _, features = trt_backend.run_features(np.concatenate([x, noise]))
    np.testing.assert_allclose(features, ref_features, rtol=1e-2, atol=1e-2)
    width = ref_features.shape[1]
    trust = Trust(
        ort_backend.card, 1.0, fit_ood(ref_features[5:11], None, ref_features[11:], [("all", width)], quantile=0.5)
    )
    paths = [f"film{i}" for i in range(len(x))]
    got, want = predict_batch(trt_backend, paths, x, trust), predict_batch(ort_backend, paths, x, trust)
    assert all(r.ood_score is not None for r in got)
    np.testing.assert_allclose([r.ood_score for r in got], [r.ood_score for r in want], rtol=1e-2, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT/pycuda not installed (pip install 'cxrtool[trt]' on a CUDA machine)")
def test_real_int8_engine_from_the_signed_qdq_onnx(onnx_file, real_batch, shared_data, tmp_path):
    """TensorRT's real parser takes cxrtool's Q/DQ ONNX (signed INT8) and the engine passes its parity bound."""
    from cxrtool.export.int8 import export_int8
    from cxrtool.export.pipeline import build_engine

    done = export_int8(
        onnx_file,
        shared_data / "covid3_256",
        tmp_path / "tiny.int8.onnx",
        fmt="qdq-onnx",
        min_agreement=0.0,
        max_auc_drop=1.0,
    )
    built = build_engine(
        done.path,
        tmp_path / "tiny.int8.engine",
        precision="int8",
        profile=BatchProfile(1, 4, 8),
        reference_onnx=onnx_file,
    )
    assert built.parity.ok and read_sidecar(built.path).precision == "int8"
