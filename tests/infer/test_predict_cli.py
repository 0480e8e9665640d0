"""`cxrtool predict` / `cxrtool bench` as a user runs them: exit codes, summary, one-line errors."""

from __future__ import annotations

import json

import pytest
from infer_helpers import CLASSES, write_bad_files, write_good_images
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.infer.backends import BACKENDS

runner = CliRunner()


def table_counts(text: str) -> dict[str, int]:
    """``{first cell: last cell}`` of the rows of a Rich table whose last cell is a number."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) >= 2 and cells[-1].isdigit():
            rows[cells[0]] = int(cells[-1])
    return rows


def test_folder_with_broken_files_exits_1_and_names_each_failure(tiny_ckpt, tmp_path):
    good = write_good_images(tmp_path / "in")
    bad = write_bad_files(tmp_path / "in" / "bad")
    out = tmp_path / "p.csv"
    result = runner.invoke(
        app, ["predict", str(tmp_path / "in"), "-m", str(tiny_ckpt), "-o", str(out), "--workers", "1"]
    )
    assert result.exit_code == 1, result.output
    counts = table_counts(result.stdout)
    assert counts.pop("failed") == len(bad)
    flagged = {k: counts.pop(k) for k in list(counts) if k.startswith("flagged: ")}  # synthetic films may be flagged
    assert sum(flagged.values()) <= len(good)
    assert set(counts) == set(CLASSES) and sum(counts.values()) == len(good)  # every good film counted once, by class
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
    ("extra", "expected"),
    [
        (["--shard", "3/2"], ["--shard", "1 <= i <= n"]),
        (["--shard", " 1/2"], ["--shard", "i/n such as 1/4"]),
        (["--shard", "1/2 "], ["--shard", "i/n such as 1/4"]),
        (["--shard", "+1/2"], ["--shard", "i/n such as 1/4"]),
        (["--backend", "tpu"], ["--backend", "auto", *BACKENDS]),  # the choices come from the backend registry
        (["--window", "bogus"], ["--window", "dicom", "minmax", "none"]),
        (["-o", "preds.txt"], [".csv or .jsonl"]),
        (["-m", "missing.safetensors"], ["missing.safetensors", "not found"]),
    ],
)
def test_usage_errors_exit_2_before_any_output(tiny_ckpt, tmp_path, extra, expected):
    write_good_images(tmp_path / "in")
    args = [
        "predict",
        str(tmp_path / "in"),
        "-m",
        str(tiny_ckpt),
        "-o",
        str(tmp_path / "p.csv"),
        "--workers",
        "0",
        *extra,
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output
    assert "Traceback" not in result.output
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))  # the run lock may stay
    assert written == ["in"]  # no output, not even an error row


def test_commands_have_help():
    for command in ("predict", "bench"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "--model" in result.output


def test_bench_json_without_data_measures_model_only(tiny_ckpt):
    result = runner.invoke(
        app, ["bench", "-m", str(tiny_ckpt), "--backend", "torch", "-b", "2", "--min-time", "0", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [row] = report["rows"]
    assert row["variant"] == "torch" and row["batch_size"] == 2 and row["model_ips"] > 0
    assert row["e2e_ips"] is None and report["decode_ms_per_image"] is None
