"""Misuse of ``calibrate`` and ``export --int8 --calib`` is exit 2 before any work (issue 22).

Both commands go through the same up-front checks: the output (``check_writable_output``, as
predict) and the manifest (``cxrtool.manifest.check_for_model``: the model's classes, the split,
two classes at least for calibrate, readable films).
"""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app

RUN = CliRunner()


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    from cxrtool.manifest import write_manifest

    return write_manifest(path, rows)


def _calibrate(checkpoint: Path, manifest: Path, out: Path | str):
    return RUN.invoke(app, ["calibrate", str(checkpoint), str(manifest), "--out", str(out)])


@pytest.fixture()
def read_only_dir(tmp_path: Path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({done.stderr.decode(errors='replace').strip()})")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize(
    "out, reason",
    [
        (lambda t: Path("/proc/cxrtool-cal.safetensors"), "kernel filesystem"),
        (lambda t: t, "it is a folder"),
        (lambda t: t / "missing" / ".." / "x" / "deeper", None),  # creatable: not refused (control)
    ],
    ids=["proc", "existing folder", "creatable"],
)
def test_calibrate_out_is_checked_before_any_work(
    trusted: Path, films: Path, tmp_path: Path, monkeypatch, out, reason
) -> None:
    import cxrtool.trust.fit as fit

    def no_work(*a, **k):  # the model must not even be loaded for a refused output
        raise AssertionError("calibrate loaded the model before checking --out")

    monkeypatch.setattr(fit, "fit_trust", no_work)
    target = out(tmp_path)
    result = _calibrate(trusted, films, target)
    if reason is None:
        assert result.exit_code == 3 and "AssertionError" in result.output  # got past the checks, to the stubbed work
    else:
        assert result.exit_code == 2 and reason in result.output and "internal error" not in result.output, (
            result.output
        )


def test_calibrate_out_on_a_read_only_mount(trusted: Path, films: Path, read_only_dir: Path) -> None:
    result = _calibrate(trusted, films, read_only_dir / "cal.safetensors")
    assert result.exit_code == 2 and "read-only" in result.output, result.output


def test_calibrate_refuses_a_one_class_manifest(trusted: Path, films: Path, tmp_path: Path) -> None:
    one = _write(tmp_path / "one.csv", [r for r in _rows(films) if r["label"] == "covid"])
    out = tmp_path / "cal.safetensors"
    result = _calibrate(trusted, one, out)
    assert result.exit_code == 2 and "1 distinct label(s) in split 'train'" in result.output, result.output
    assert not out.exists()


def test_calibrate_refuses_one_class_in_the_temperature_split(trusted: Path, films: Path, tmp_path: Path) -> None:
    rows = [r for r in _rows(films) if r["split"] == "train" or (r["split"] == "val" and r["label"] == "normal")]
    result = _calibrate(trusted, _write(tmp_path / "m.csv", rows), tmp_path / "cal.safetensors")
    assert result.exit_code == 2 and "split 'val'" in result.output and "distinct" in result.output, result.output


def test_calibrate_refuses_labels_that_are_not_the_models_classes(trusted: Path, films: Path, tmp_path: Path) -> None:
    rows = [dict(r, label={"covid": "cat", "normal": "dog"}.get(r["label"], r["label"])) for r in _rows(films)]
    result = _calibrate(trusted, _write(tmp_path / "pets.csv", rows), tmp_path / "cal.safetensors")
    assert result.exit_code == 2 and "'cat'" in result.output and "not the model's classes" in result.output, (
        result.output
    )


def test_calibrate_refuses_a_split_whose_films_are_all_missing(trusted: Path, films: Path, tmp_path: Path) -> None:
    rows = [
        dict(r, path=str(tmp_path / f"gone{i}.png")) if r["split"] == "val" else r for i, r in enumerate(_rows(films))
    ]
    result = _calibrate(trusted, _write(tmp_path / "gone.csv", rows), tmp_path / "cal.safetensors")
    assert result.exit_code == 2 and "is readable" in result.output, result.output


def test_export_int8_with_wrong_classes_fails_before_the_onnx_export(
    trusted: Path, films: Path, tmp_path: Path, monkeypatch
) -> None:
    import cxrtool.export.onnx as onnx_mod
    from cxrtool.modelfile import default_onnx_path

    def no_export(*a, **k):
        raise AssertionError("the ONNX export ran before --calib was validated")

    monkeypatch.setattr(onnx_mod, "export_onnx", no_export)
    rows = [dict(r, label={"covid": "cat"}.get(r["label"], r["label"])) for r in _rows(films)]
    pets = _write(tmp_path / "pets.csv", rows)
    result = RUN.invoke(app, ["export", str(trusted), "--int8", "--calib", str(pets)])
    assert result.exit_code == 2 and "'cat'" in result.output and "not the model's classes" in result.output, (
        result.output
    )
    assert not default_onnx_path(trusted).exists()


def test_calibration_set_and_calibrate_share_one_manifest_check(trusted: Path, films: Path, tmp_path: Path) -> None:
    """The INT8 calibration set refuses what calibrate refuses, with the same words."""
    from cxrtool.errors import CxrError
    from cxrtool.export.calib_films import calibration_set
    from cxrtool.modelfile import read_card

    multilabel_rows = [dict(r, **{"y:covid": "1"}) for r in _rows(films)]
    from cxrtool.manifest import write_manifest

    ml = write_manifest(tmp_path / "ml.csv", multilabel_rows, extra_columns=["y:covid"])
    with pytest.raises(CxrError, match="multilabel.*multiclass"):
        calibration_set(ml, read_card(trusted))
    assert calibration_set(films, read_card(trusted)).labels is not None  # the model's own classes: labelled check
