"""What a new user meets first: a fast ``--help``, mistakes as one-line usage errors, output that fits.

Each start-up check runs the real ``python -m cxrtool`` in a fresh interpreter and reads its
``sys.modules`` at exit, so an import anywhere on the path (a command module, a core module it
pulls in) fails the test by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrtool.cli.main import COMMANDS, app

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "onnxruntime", "openvino", "zennit", "matplotlib")
#: what help needs none of either: numpy and Pillow (0.25 s), pydantic (Typer's validators, 0.2 s)
LIGHT_START = (*HEAVY, "numpy", "PIL", "pydicom", "pydantic")
#: Runs cxrtool with the given arguments, then prints which of those libraries it imported.
_RUNNER = """
import runpy, sys
sys.argv = ["cxrtool", *sys.argv[1:]]
code = 0
try:
    runpy.run_module("cxrtool", run_name="__main__")
except SystemExit as exc:
    code = exc.code
sys.stderr.write("\\nIMPORTED " + " ".join(m for m in {heavy!r} if m in sys.modules) + "\\n")
sys.exit(code)
"""
runner = CliRunner()


def _run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[int, str, str, list[str]]:
    """Exit code, stdout, stderr (without the runner's line) and the heavy modules imported."""
    code = _RUNNER.format(heavy=LIGHT_START)
    full_env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, env=full_env, timeout=300
    )
    stderr, _, imported = proc.stderr.rpartition("\nIMPORTED ")
    return proc.returncode, proc.stdout, stderr, imported.split()


def _leaf_commands() -> list[tuple[str, ...]]:
    paths = [(name,) for name in COMMANDS if name != "prep"] + [("doctor",)]
    return paths + [("prep", sub) for sub in ("dicom", "nih", "folder", "radiography", "covidx", "kermany")]


@pytest.mark.parametrize("path", [(), *_leaf_commands()], ids=lambda p: " ".join(p) or "cxrtool")
def test_help_imports_no_heavy_library(path: tuple[str, ...]) -> None:
    code, out, err, imported = _run(*path, "--help")
    assert code == 0, err
    assert "Usage: cxrtool" in out
    assert imported == [], f"`cxrtool {' '.join(path)} --help` imported {imported}"  # under 0.5 s CPU


def test_explain_help_offers_dicomweb_inputs_without_heavy_imports() -> None:
    """``explain`` takes predict's DICOMweb options (shared from cli/_dicomweb.py) and its --help stays light."""
    code, out, err, imported = _run("explain", "--help")
    assert code == 0 and imported == [], (err, imported)
    for option in ("--dicomweb", "--qido", "--ca-file", "--token-env", "--token-file", "--basic-auth-file"):
        assert option in out, option


def test_root_help_lists_every_command_without_importing_them() -> None:
    code, out, _, imported = _run("--help")
    assert code == 0 and imported == []
    for name, (_, summary) in COMMANDS.items():
        assert f"  {name} " in out and summary.split()[0] in out


@pytest.fixture()
def films(tmp_path: Path) -> Path:
    folder = tmp_path / "films"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 40), np.uint8)).save(folder / f"film{i}.png")
    return folder


def _usage_error(args: list[str], *needles: str, cwd: Path) -> str:
    """Exit 2, no heavy import, stderr is one ``error:`` line (or click's usage block) naming the problem."""
    code, out, err, imported = _run(*args, cwd=cwd)
    assert code == 2, (code, out, err)
    assert not set(imported) & {*HEAVY, "numpy"}, imported  # refused before any model or film is loaded
    lines = [line for line in err.splitlines() if line.strip()]
    problem = [line for line in lines if line.startswith(("error:", "Error:"))]
    assert len(problem) == 1, lines
    assert lines[-1] == problem[0]  # nothing after it, and no progress line before it
    assert not any("predict" in line and "/" in line and "0:00" in line for line in lines)
    for needle in needles:
        assert needle in problem[0], (needle, problem[0])
    assert "Value error" not in err and "Traceback" not in err
    return problem[0]


def test_missing_input_is_a_usage_error(tmp_path: Path, films: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    _usage_error(
        ["predict", str(films / "typo.png"), "-m", str(model), "-o", "p.csv"],
        "typo.png",
        "no such file or folder",
        cwd=tmp_path,
    )
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("content", ["empty", "sidecars only"])
def test_folder_without_films_is_a_usage_error(tmp_path: Path, content: str) -> None:
    folder = tmp_path / "scans"
    folder.mkdir()
    if content == "sidecars only":
        (folder / "labels.csv").write_text("a,b\n")
        (folder / ".hidden.png").write_bytes(b"x")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    line = _usage_error(
        ["predict", str(folder), "-m", str(model), "-o", "p.csv"], "scans", "no image or DICOM files", cwd=tmp_path
    )
    assert "give the folder that holds the films" in line


def test_dicomweb_inputs_pass_the_path_check() -> None:
    from cxrtool.cli._options import check_inputs

    assert check_inputs([Path("dicomweb+https://pacs.example/studies/1.2.3")]) is None  # not a local path


def test_explain_with_an_export_names_the_checkpoint(tmp_path: Path, films: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not read")
    line = _usage_error(["explain", str(films), "-m", str(model), "-o", "heat"], cwd=tmp_path)
    assert "explain needs the checkpoint (.safetensors), not an export" in line
    assert not (tmp_path / "heat").exists()


def test_torch_backend_on_an_export_does_not_suggest_export(tmp_path: Path, films: Path, onnx_with_trust: Path) -> None:
    """``-m x.onnx --backend torch`` (a real export): re-exporting cannot help; the checkpoint can."""
    result = runner.invoke(
        app, ["predict", str(films), "-m", str(onnx_with_trust), "-o", str(tmp_path / "p.csv"), "--backend", "torch"]
    )
    assert result.exit_code == 2, result.output
    assert "checkpoint (.safetensors)" in result.stderr and "cxrtool export" not in result.stderr


@pytest.mark.parametrize(
    ("device", "needle"), [("banana", "unknown device 'banana'; use cpu, cuda or cuda:N"), ("gpu", "use cuda")]
)
def test_device_names_are_checked_before_any_work(tmp_path: Path, films: Path, device: str, needle: str) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    _usage_error(["predict", str(films), "-m", str(model), "-o", "p.csv", "--device", device], needle, cwd=tmp_path)
    assert not (tmp_path / "p.csv").exists()


def test_train_without_a_manifest_is_a_usage_error_before_torch(tmp_path: Path) -> None:
    line = _usage_error(["train", "-o", "run"], "no training manifest given", "MANIFEST", cwd=tmp_path)
    assert "--config" in line
    assert not (tmp_path / "run").exists()


def test_choice_errors_read_plainly(tmp_path: Path, films: Path) -> None:
    line = _usage_error(
        ["predict", str(films), "-m", "m.onnx", "-o", "p.csv", "--backend", "onnx"],
        "'onnx' is not one of",
        cwd=tmp_path,
    )
    assert "onnxruntime" in line


@pytest.mark.parametrize("how", ["piped", "COLUMNS=200"])
def test_tables_and_paths_are_not_wrapped(tmp_path: Path, how: str) -> None:
    """A long output path and a table row stay whole lines however stdout is connected."""
    from cxrtool.cli._console import _console

    env = {"COLUMNS": "200"} if how == "COLUMNS=200" else {}
    code = (
        "from rich.table import Table\n"
        "from cxrtool.cli._console import out\n"
        "out.print('predictions -> ' + 'a/' * 60 + 'preds.csv', soft_wrap=True)\n"
        "t = Table()\nt.add_column('predicted')\nt.add_column('files')\n"
        "t.add_row('viral_pneumonia_' * 5, '12345')\nout.print(t)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "predictions -> " + "a/" * 60 + "preds.csv"
    assert any("viral_pneumonia_" * 5 in line and "12345" in line for line in lines)
    assert callable(_console)


def test_piped_progress_prints_plain_lines_and_no_unknown_total(monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped, a long step still reports (a line at the end at least), and an unknown total is never ``N/?``."""
    import io

    from rich.console import Console

    from cxrtool.cli import _console

    buffer = io.StringIO()
    monkeypatch.setattr(_console, "err", Console(file=buffer, markup=False, width=200))
    monkeypatch.setattr(_console, "PLAIN_EVERY_S", 0.0)
    with _console.progress(lazy=True) as bar:
        task = bar.add_task("predict", total=None, info="")
        assert buffer.getvalue() == ""  # nothing before the first step (an error would come first)
        bar.advance(task, 28)
        bar.advance(task, 2)
    lines = buffer.getvalue().splitlines()
    assert lines[0].startswith("predict: 28,") and lines[-1].startswith("predict: 30,")
    assert "?" not in buffer.getvalue()


def test_one_step_is_singular() -> None:
    from cxrtool.cli.train import _plural

    assert _plural(1, "step") == "1 step" and _plural(3, "step") == "3 steps"


@pytest.fixture(scope="module")
def onnx_with_trust(tmp_path_factory: pytest.TempPathFactory, tiny_arch: str) -> Path:
    """A tiny DenseNet exported to ONNX with OOD statistics in its card, so predict scores OOD too."""
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.export.onnx import export_onnx
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint
    from cxrtool.trust.fit import TrustFit
    from cxrtool.trust.ood import fit_ood

    torch.manual_seed(0)
    model = build_model(tiny_arch, num_classes=3).eval()
    card = ModelCard(
        arch=tiny_arch,
        task="multiclass",
        class_names=["covid", "normal", "viral_pneumonia"],
        preprocess=PreprocessCfg(input_size=32),
    )
    rng = np.random.default_rng(0)
    with torch.no_grad():
        _, features = model.forward_features(torch.from_numpy(rng.random((40, 3, 32, 32), dtype=np.float32)))
    ood = fit_ood(features[:30].numpy(), rng.integers(0, 3, 30), features[30:].numpy(), model.feature_layout())
    root = tmp_path_factory.mktemp("onnx_with_trust")
    checkpoint = save_checkpoint(
        root / "tiny.safetensors", model, card, TrustFit({"temperature": 1.0}, ood).apply(card)
    )
    return export_onnx(checkpoint, root / "tiny.onnx").path


def test_onnx_runtime_predict_imports_neither_torch_nor_openvino(
    onnx_with_trust: Path, films: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    code, _, err, imported = _run(
        "predict", str(films), "-m", str(onnx_with_trust), "-o", "p.csv", "--backend", "onnxruntime", cwd=tmp_path
    )
    assert code == 0, err
    assert "torch" not in imported and "openvino" not in imported, imported
    rows = (tmp_path / "p.csv").read_text().splitlines()
    header = rows[0].split(",")
    scores = [row.split(",")[header.index("ood_score")] for row in rows[1:]]
    assert len(scores) == 2 and all(float(s) == float(s) for s in scores)  # OOD scored without torch, finite


def test_ood_distance_is_the_same_in_numpy_and_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without torch loaded the score runs in numpy; it must equal the torch path's."""
    import torch  # noqa: F401  (loaded: the torch path)

    from cxrtool.trust.ood import fit_ood

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(60, 12))
    model = fit_ood(feats[:40], rng.integers(0, 2, 40), feats[40:], [("a", 4), ("b", 8)])
    new = rng.normal(size=(7, 12)) * 2
    with_torch = model.score(new)
    for depth in model.depths:  # drop the cached whitening, then hide torch
        depth._whiten = depth._white_means = None
    monkeypatch.delitem(sys.modules, "torch")
    without = model.score(new)
    np.testing.assert_allclose(without, with_torch, rtol=1e-9, atol=1e-9)


def test_bench_data_skips_an_unreadable_file_and_counts_it(films: Path) -> None:
    """The demo's folder holds a deliberately truncated film; ``bench --data`` on it must still measure."""
    from cxrtool.config import PreprocessCfg
    from cxrtool.infer.measure import _inputs

    good = sorted(films.glob("*.png"))
    truncated = films / "truncated_download.png"
    truncated.write_bytes(good[0].read_bytes()[:40])
    inputs, decode_ms, readable = _inputs([*good, truncated], PreprocessCfg(input_size=32), 4, lambda _: None)
    assert readable == good and inputs.shape[0] == len(good) and decode_ms is not None


def test_report_says_what_the_ood_score_means(onnx_with_trust: Path, films: Path, tmp_path: Path) -> None:
    """A negative score is not a bug to the reader: the page says what 0 means and where the threshold is."""
    pytest.importorskip("onnxruntime")
    from cxrtool.modelfile import read_any_card

    html = tmp_path / "r.html"
    result = runner.invoke(
        app, ["predict", str(films), "-m", str(onnx_with_trust), "-o", str(tmp_path / "p.csv"), "--html", str(html)]
    )
    assert result.exit_code == 0, result.output
    page = " ".join(html.read_text(encoding="utf-8").split())
    threshold = read_any_card(onnx_with_trust).ood["threshold"]
    assert "0 is a typical validation film, negative means more typical than that" in page
    assert f"Films above {threshold:.3f}" in page and "95% of the validation films pass" in page


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_arch: str) -> Path:
    import torch

    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(tiny_arch, num_classes=2)
    card = ModelCard(arch=tiny_arch, task="multiclass", class_names=["a", "b"], preprocess=PreprocessCfg(input_size=32))
    return save_checkpoint(tmp_path_factory.mktemp("tiny_ckpt") / "tiny.safetensors", model, card)


def test_torch_predict_with_decode_workers_leaves_stderr_clean(
    tiny_checkpoint: Path, films: Path, tmp_path: Path
) -> None:
    """The decode pool (forkserver workers) must never leave resource-tracker warnings or tracebacks behind."""
    for name in ("c", "d"):
        (films / name).mkdir()
        for f in sorted(films.glob("*.png")):
            (films / name / f.name).write_bytes(f.read_bytes())
    code = "import sys, runpy; sys.argv = ['cxrtool', *sys.argv[1:]]; sys.path.insert(0, {tests!r})\n" + (
        "from tiny_arch import register_tiny_arch; register_tiny_arch(); "
        "runpy.run_module('cxrtool', run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for run in range(3):
        args = [
            "predict",
            str(films),
            "-m",
            str(tiny_checkpoint),
            "-o",
            f"p{run}.csv",
            "--backend",
            "torch",
            "--workers",
            "1",
        ]
        proc = subprocess.run(
            [sys.executable, "-c", code.format(tests=str(REPO / "tests")), *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        for symptom in ("Traceback", "resource_tracker", "KeyError", "leaked"):
            assert symptom not in proc.stderr, f"run {run}: {proc.stderr}"
