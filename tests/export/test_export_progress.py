"""Progress of ``export --int8``: the core reports film counts per stage, the CLI shows them without Rich codes."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrtool.export import int8 as int8_mod
from cxrtool.export.calib_films import calibration_set
from cxrtool.export.progress import ExportProgress
from cxrtool.modelfile import read_onnx_card

#: synthetic films in the calibration folder (a quarter, by path hash, is held out)
FILMS = 12


@pytest.fixture(scope="module")
def calib_folder(tmp_path_factory, onnx_file) -> Path:
    """12 seeded noise films and one unreadable file that falls on the calibration side of the split."""
    folder = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for i in range(FILMS):
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(folder / f"film{i:02d}.png")
    card = read_onnx_card(onnx_file)
    for k in range(20):  # the split is a hash of the name: take the first broken name that calibrates
        bad = folder / f"broken{k}.png"
        bad.write_bytes(b"not a png")
        if bad in calibration_set(folder, card).calibration:
            break
        bad.unlink()
    else:
        pytest.fail("no name of the 20 tried falls on the calibration side")
    return folder


def test_callback_counts_every_film_of_each_stage(onnx_file, calib_folder, tmp_path):
    events: list[ExportProgress] = []
    split = calibration_set(calib_folder, read_onnx_card(onnx_file))
    done = int8_mod.export_int8(
        onnx_file, calib_folder, tmp_path / "t.int8.xml", min_agreement=0.0, on_progress=events.append
    )
    stages: dict[str, list[ExportProgress]] = {}
    for e in events:
        stages.setdefault(e.stage, []).append(e)
    # stages come one after another, never interleaved
    order = [e.stage for i, e in enumerate(events) if i == 0 or events[i - 1].stage != e.stage]
    assert order == list(stages)
    calib = [s for s in stages if s.startswith("calibration films (plain, pass ")]
    assert calib and calib[0] == "calibration films (plain, pass 1)"
    want = {
        "held-out films loaded": len(split.holdout),
        "fp32 reference": len(split.holdout),
        "INT8 check (plain)": len(split.holdout),
        **{s: len(split.calibration) for s in calib},
    }
    assert set(stages) == set(want)
    for stage, seen in stages.items():
        counts = [e.done for e in seen]
        assert all(e.total == want[stage] for e in seen), stage
        assert counts == sorted(counts) and counts[0] >= 1 and counts[-1] == want[stage], (stage, counts)
    # the unreadable film is counted as done but was never handed to NNCF
    assert done.calibration["skipped"] == 1 and len(split.calibration) == FILMS - len(split.holdout) + 1


def test_cli_piped_shows_plain_progress_lines_and_no_rich_codes(onnx_file, calib_folder, tmp_path, monkeypatch):
    """Piped (CliRunner is not a terminal): one plain line per stage and count, stdout free of NNCF's bars and log."""
    from cxrtool.cli.main import app

    # the untrained tiny model may disagree with itself on 3 noise films; the gate is not what is tested here
    monkeypatch.setattr(int8_mod, "export_int8", functools.partial(int8_mod.export_int8, min_agreement=0.0))
    out_dir = tmp_path / "out"
    onnx = out_dir / onnx_file.name
    out_dir.mkdir()
    onnx.write_bytes(onnx_file.read_bytes())
    result = CliRunner().invoke(app, ["export", str(onnx), "--int8", "--calib", str(calib_folder)])
    assert result.exit_code == 0, result.output
    split = calibration_set(calib_folder, read_onnx_card(onnx_file))
    n_cal, n_held = len(split.calibration), len(split.holdout)
    lines = result.stderr.splitlines()
    assert f"loading {n_held} held-out films" in lines
    assert f"NNCF quantization (plain) on {n_cal} calibration films" in lines
    for stage, total in [
        ("held-out films loaded", n_held),
        ("fp32 reference", n_held),
        (r"calibration films \(plain, pass 1\)", n_cal),
        (r"INT8 check \(plain\)", n_held),
    ]:
        assert any(re.fullmatch(rf"{stage}: {total}/{total}, 0:\d\d:\d\d", line) for line in lines), (stage, lines)
    assert "\x1b" not in result.output  # no colour, cursor movement or erase: plain text for a log
    assert result.stdout.splitlines()[0] == f"wrote {out_dir / 'tiny.int8.xml'}"
    for noise in ("Statistics collection", "INFO:nncf"):
        assert noise not in result.stdout
