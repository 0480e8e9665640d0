"""``cxrtool export`` option handling: every mistake is a one-line error with exit code 2, found before any slow
work.
"""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def run(*args: str):
    return CliRunner().invoke(app, ["export", *args])


def test_help_lists_the_trt_options():
    result = run("--help")
    assert result.exit_code == 0
    for option in (
        "--onnx",
        "--trt",
        "--fp16",
        "--int8",
        "--calib",
        "--min-batch",
        "--opt-batch",
        "--max-batch",
        "--check-images",
    ):
        assert option in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "nothing to do: choose --onnx, --int8 --calib and/or --trt"),
        (["--onnx", "--trt", "--int8"], "--int8 needs --calib"),
        (["--int8"], "--int8 needs --calib"),
        (["--fp16"], "--fp16 is a TensorRT precision; add --trt"),
        (["--trt", "--fp16", "--int8", "--calib", "."], "choose one TensorRT precision"),
        (["--trt", "--min-batch", "8", "--opt-batch", "4"], "1 <= min <= opt <= max"),
        (["--trt", "--device", "cpu"], "TensorRT needs a CUDA device"),
    ],
)
def test_usage_errors(checkpoint, args, message):
    result = run(str(checkpoint), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_missing_model(tmp_path):
    result = run(str(tmp_path / "none.safetensors"), "--onnx")
    assert result.exit_code == 2 and "model file not found" in result.output


def test_onnx_from_onnx_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x")
    result = run(str(path), "--onnx")
    assert result.exit_code == 2 and "needs the .safetensors checkpoint" in " ".join(result.output.split())


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_trt_without_tensorrt_says_so(checkpoint):
    result = run(str(checkpoint), "--trt", "--fp16")
    assert result.exit_code == 2 and "TensorRT is not installed" in " ".join(result.output.split())
