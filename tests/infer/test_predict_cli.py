"""`cxrtool predict` / `cxrtool bench` as a user runs them: exit codes, summary, one-line errors."""

from __future__ import annotations

import json

import pytest
from infer_helpers import write_bad_files, write_good_images
from typer.testing import CliRunner

from cxrtool.cli.main import app

runner = CliRunner()


def test_folder_with_broken_files_exits_1_and_names_each_failure(tiny_ckpt, tmp_path):
    good = write_good_images(tmp_path / "in")
    bad = write_bad_files(tmp_path / "in" / "bad")
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(tmp_path / "in"), "-m", str(tiny_ckpt), "-o", str(out), "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert "failed" in result.stdout and str(len(good)) in result.stdout
    for path in bad:
        assert f"failed: {path}:" in result.stderr
    assert f"{len(good)} predicted" in result.stderr
    assert len(out.read_text().splitlines()) == 1 + len(good) + len(bad)


def test_clean_run_exits_0_then_resume_predicts_nothing_new(tiny_ckpt, tmp_path):
    good = write_good_images(tmp_path / "in")
    args = ["predict", str(tmp_path / "in"), "-m", str(tiny_ckpt), "-o", str(tmp_path / "p.jsonl"), "--workers", "0"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.stderr
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0
    assert "already in output" in resumed.stdout and "0 predicted" in resumed.stderr
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == len(good)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shard", "3/2"], "--shard"),
        (["--backend", "tpu"], "choose from"),
        (["-o", "preds.txt"], ".csv or .jsonl"),
        (["-m", "missing.safetensors"], "not found"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tiny_ckpt, tmp_path, extra, message):
    args = ["predict", str(tmp_path), "-m", str(tiny_ckpt), "-o", str(tmp_path / "p.csv"), *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_commands_have_help():
    for command in ("predict", "bench"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "--model" in result.output


def test_bench_json_without_data_measures_model_only(tiny_ckpt):
    result = runner.invoke(app, ["bench", "-m", str(tiny_ckpt), "--backend", "torch", "-b", "2", "--min-time", "0", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [row] = report["rows"]
    assert row["variant"] == "torch" and row["batch_size"] == 2 and row["model_ips"] > 0
    assert row["e2e_ips"] is None and report["decode_ms_per_image"] is None
