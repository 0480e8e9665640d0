"""`run_bench`: what it measures and how it derives its ratios."""

from __future__ import annotations

import json
import math

import pytest
from infer_helpers import write_good_images

from cxrtool.errors import CxrError
from cxrtool.infer.measure import BenchReport, BenchRow, run_bench, sample_files


def test_bench_on_real_files_fills_every_row_consistently(tiny_ckpt, tmp_path):
    write_good_images(tmp_path / "films")
    report = run_bench(
        [tiny_ckpt], data=tmp_path / "films", backends=["torch"], batch_sizes=(1, 2), images=4, min_time=0, workers=1
    )
    assert [(r.variant, r.batch_size) for r in report.rows] == [("torch", 1), ("torch", 2)]
    assert report.inputs["images"] == 4 and report.inputs["input_size"] == 32
    assert report.decode_ms > 0
    torch_info = report.variants["torch"]
    assert torch_info["reference"] and torch_info["top1_agreement"] == 1.0 and torch_info["max_abs_logit_diff"] == 0
    for r in report.rows:
        assert r.model_ips > 0 and r.e2e_ips > 0
        assert math.isclose(r.ideal_e2e_ips, 1 / (report.decode_ms / 1e3 + 1 / r.model_ips))
        assert math.isclose(r.e2e_ratio, r.e2e_ips / r.ideal_e2e_ips)
    json.dumps(report.to_dict())  # --json must serialise


def test_ratios_pair_each_backend_with_its_baseline_at_equal_batch():
    report = BenchReport(machine={}, inputs={}, variants={"torch": {}, "onnxruntime": {}, "openvino-bf16": {}})
    report.rows = [
        BenchRow("torch", 16, 20.0),
        BenchRow("onnxruntime", 16, 44.0),
        BenchRow("onnxruntime", 1, 30.0),  # no torch row at batch 1: no ratio
        BenchRow("openvino-bf16", 16, 150.0),
    ]
    got = {(q["variant"], q["baseline"], q["batch_size"]): q["speedup"] for q in report.ratios()}
    assert got == {
        ("onnxruntime", "torch", 16): pytest.approx(2.2),
        ("openvino-bf16", "onnxruntime", 16): pytest.approx(150 / 44),
    }


def test_sample_files_spreads_over_class_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    for cls in ("a", "b", "c"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            (tmp_path / cls / f"{i}.png").write_bytes(b"x")
    picked = sample_files(tmp_path, 3)
    assert sorted(p.parent.name for p in picked) == ["a", "b", "c"]
    assert len(sample_files(tmp_path, 0)) == 15
    with pytest.raises(CxrError, match="no input files"):
        sample_files(tmp_path / "empty", 3)


def test_unknown_backend_filter_is_a_clear_error(tiny_ckpt):
    with pytest.raises(CxrError, match="no backend to benchmark"):
        run_bench([tiny_ckpt], backends=["tensorrt"], batch_sizes=(1,), min_time=0)


@pytest.mark.slow
def test_bench_measures_every_available_backend_of_checkpoint_and_onnx(tiny_ckpt, tiny_onnx, shared_data):
    from cxrtool.infer.loading import available_backends

    report = run_bench([tiny_onnx, tiny_ckpt], data=shared_data / "covid3", batch_sizes=(4,), images=16, min_time=0.2)
    expected = {"torch", *available_backends(tiny_onnx)}
    assert {v.split("-")[0] for v in report.variants} == expected
    assert next(iter(report.variants)) == "torch"  # the fp32 reference comes first whatever the --model order
    for label, info in report.variants.items():
        if not label.endswith("bf16"):
            assert info["top1_agreement"] == 1.0 and info["max_abs_logit_diff"] < 1e-3, label
    assert {(q["variant"], q["baseline"]) for q in report.ratios()} >= {("onnxruntime", "torch")}
