"""``--backend auto``: picks by the per-machine measurement when there is one, else by CPU flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrtool.config import PreprocessCfg
from cxrtool.infer import auto
from cxrtool.infer.auto import Candidate, load_auto, machine_key, rank, save_measurements
from cxrtool.modelfile import ModelCard, file_sha256, onnx_metadata
from cxrtool.modelfile.loaded import LoadedModel, open_model

CARD = ModelCard(arch="densenet121", task="multiclass", class_names=["a", "b", "c"])


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(auto.CACHE_ENV, str(folder))
    return folder


@pytest.fixture()
def small_onnx(tmp_path) -> Path:
    """A 3-class Conv/Gemm ONNX with a cxrtool card: loads in ONNX Runtime and OpenVINO in milliseconds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from cxrtool.modelfile.write import set_onnx_metadata

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1),
        ],
        "small",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(size=(3, 4)).astype(np.float32), "fc"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"weights")
    card = ModelCard(
        arch="densenet121", task="multiclass", class_names=["a", "b", "c"], preprocess=PreprocessCfg(input_size=8)
    )
    set_onnx_metadata(model, onnx_metadata(card, ckpt))
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path))
    return path


def files(tmp_path: Path, *names: str) -> dict[str, LoadedModel]:
    """Distinct small files, as :class:`LoadedModel` records (ranking reads only their hash)."""
    import hashlib

    out = {}
    for i, name in enumerate(names):
        path = tmp_path / f"{name}.bin"
        path.write_bytes(bytes([i]) * 8)
        out[name] = LoadedModel(path, path.read_bytes(), hashlib.sha256(path.read_bytes()).hexdigest(), CARD)
    return out


def test_the_fastest_measured_variant_wins(tmp_path):
    f = files(tmp_path, "ckpt", "onnx", "xml")
    found = [
        Candidate("torch", "torch", f["ckpt"]),
        Candidate("onnxruntime", "onnxruntime", f["onnx"]),
        Candidate("openvino-f32", "openvino", f["onnx"], {"precision": "f32"}),
        Candidate("openvino-int8", "openvino", f["xml"]),
    ]
    speeds = {"torch": 9.0, "onnxruntime": 23.0, "openvino-f32": 19.0, "openvino-int8": 41.0}
    save_measurements([(c.path, c.label, 16, speeds[c.label]) for c in found])
    ranked = rank(found, "cpu")
    assert [r.candidate.label for r in ranked] == ["openvino-int8", "onnxruntime", "openvino-f32", "torch"]
    assert "fastest measured here (cxrtool bench --save): openvino-int8 41.0 img/s at batch 16" in ranked[0].reason
    # a re-measurement that turns the order around turns the choice around
    save_measurements([(f["onnx"].path, "onnxruntime", 16, 50.0)])
    assert rank(found, "cpu")[0].candidate.label == "onnxruntime"


def test_batch_16_measurement_is_kept_over_others(tmp_path):
    f = files(tmp_path, "onnx")
    save_measurements([(f["onnx"].path, "onnxruntime", 16, 20.0)])
    save_measurements([(f["onnx"].path, "onnxruntime", 1, 5.0)])
    stored = auto.load_measurements()
    assert [v["batch_size"] for v in stored.values()] == [16] and (auto.cache_dir() / f"{machine_key()}.json").is_file()


def test_a_measurement_of_another_file_does_not_count(tmp_path):
    """The cache is per model file (sha256): an export of another checkpoint never decides."""
    f = files(tmp_path, "a", "b")
    save_measurements([(f["a"].path, "onnxruntime", 16, 99.0), (f["a"].path, "openvino-f32", 16, 1.0)])
    found = [Candidate("onnxruntime", "onnxruntime", f["b"]), Candidate("openvino-f32", "openvino", f["b"])]
    ranked = rank(found, "cpu")
    assert "no bench measurement here for onnxruntime, openvino-f32" in ranked[0].reason


@pytest.mark.parametrize(
    "flags, labels, first",
    [
        ({"avx2", "avx512_vnni"}, ["onnxruntime", "openvino-f32", "openvino-bf16", "openvino-int8"], "openvino-int8"),
        ({"avx2"}, ["onnxruntime", "openvino-f32", "openvino-int8"], "openvino-int8"),
        ({"avx2", "avx512_bf16"}, ["onnxruntime", "openvino-f32", "openvino-bf16", "torch"], "openvino-bf16"),
        ({"avx2"}, ["torch", "openvino-f32", "onnxruntime"], "onnxruntime"),
        (set(), ["openvino-int8", "torch"], "torch"),  # no integer SIMD: INT8 is the last resort
    ],
)
def test_without_measurements_cpu_flags_decide(tmp_path, flags, labels, first):
    f = files(tmp_path, "m")
    found = [Candidate(label, label.split("-")[0], f["m"]) for label in labels]
    ranked = auto._rank_cpu(found, flags, "no bench measurement")
    assert ranked[0].candidate.label == first and {r.candidate.label for r in ranked} == set(labels)
    assert ranked[0].reason.endswith("; no bench measurement")


def test_load_auto_follows_the_cache_and_says_why(small_onnx, cache):
    found = auto.candidates(open_model(small_onnx), "cpu")
    labels = {c.label for c in found}
    assert {"onnxruntime", "openvino-f32"} <= labels
    for winner in ("openvino-f32", "onnxruntime"):
        save_measurements([(small_onnx, c.label, 16, 100.0 if c.label == winner else 10.0) for c in found])
        engine = load_auto(open_model(small_onnx), "cpu")
        label = engine.name if engine.name == "onnxruntime" else f"{engine.name}-{engine.describe()['precision']}"
        assert label == winner
        assert engine.describe()["choice"].startswith(f"{winner}: fastest measured here")
        x = np.ones((2, 3, 8, 8), np.float32)
        assert engine.run(x).shape == (2, 3)


def test_bench_save_feeds_auto(small_onnx, tmp_path):
    from cxrtool.infer.measure import run_bench

    report = run_bench([small_onnx], batch_sizes=(16,), min_time=0, save=True)
    assert Path(report.saved_to).is_file()
    fastest = max((r for r in report.rows), key=lambda r: r.model_ips).variant
    assert report.auto["variant"] == fastest and report.auto["vs_fastest_fp32"] >= 1.0 - 1e-9
    assert load_auto(open_model(small_onnx), "cpu").describe()["choice"].startswith(f"{fastest}: fastest measured here")
    assert file_sha256(small_onnx) in next(iter(auto.load_measurements()))
