"""prepare_file / prepare_folder: statuses, manifest, privacy, resume, header checks, workers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from dicom_synth import PHI_ID, PHI_NAME
from PIL import Image

from cxrtool.dicom.prepare import PrepOptions, header_checks, output_name, prepare_folder
from cxrtool.dicom.read import read_dataset
from cxrtool.errors import CxrError
from cxrtool.manifest import read_manifest
from cxrtool.privacy import pseudonymise

SALT = "test-salt"


def opts(**kw) -> PrepOptions:
    return PrepOptions(salt=SALT, **kw)


def by_input(rows) -> dict[str, dict]:
    return {r["input"]: r for r in rows}


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_folder_statuses_and_outputs(synthetic_dir, tmp_path):
    before = tree_digest(synthetic_dir)
    dst = tmp_path / "out"
    summary = prepare_folder(synthetic_dir, dst, options=opts())
    rows = by_input(summary.rows)
    assert tree_digest(synthetic_dir) == before  # inputs never touched
    expected_ok = {
        "window12.dcm",
        "multiwindow.dcm",
        "sub/signed16.dcm",
        "sub/voilut.dcm",
        "sigmoid.dcm",
        "mono1.dcm",
        "sub/deeper/multiframe.dcm",
        "window12_rle.dcm",
        "IM0001",
        "acrnema.dcm",
        "ct_head.dcm",
    }
    assert {k for k, r in rows.items() if r["status"] == "ok"} == expected_ok
    assert rows["report_sr.dcm"]["status"] == "skipped" and "no pixel data" in rows["report_sr.dcm"]["error"]
    assert rows["sub/photo.bin"]["status"] == "skipped" and "not a DICOM" in rows["sub/photo.bin"]["error"]
    assert rows["empty.dcm"] == {**rows["empty.dcm"], "status": "failed", "error": "empty file (0 bytes)"}
    assert rows["truncated.dcm"]["status"] == "failed" and rows["truncated.dcm"]["error"]
    assert len(summary.failed) == 2
    # the output tree mirrors the input tree; suffix-less names keep their name
    assert rows["sub/deeper/multiframe.dcm"]["path"] == "sub/deeper/multiframe.png"
    assert rows["IM0001"]["path"] == "IM0001.png"
    assert (dst / "sub" / "voilut.png").is_file()
    # encodings of the same pixels give the same PNG
    same = [np.asarray(Image.open(dst / n)) for n in ("window12.png", "window12_rle.png")]
    np.testing.assert_array_equal(*same)
    assert rows["sigmoid.dcm"]["voi"] == "window 2048/1500 SIGMOID"
    assert rows["IM0001"]["voi"] == "min-max (no VOI in file)"
    # manifest on disk = returned rows, readable by the shared reader, no temp files left
    m = read_manifest(dst / "manifest.csv")
    assert [r["input"] for r in m.rows] == [r["input"] for r in summary.rows]
    assert not [p for p in dst.rglob(".*")]


def test_privacy(synthetic_dir, tmp_path):
    summary = prepare_folder(synthetic_dir, tmp_path / "out", options=opts())
    row = by_input(summary.rows)["window12.dcm"]
    assert row["group"] == pseudonymise(PHI_ID, SALT) != PHI_ID
    text = (tmp_path / "out" / "manifest.csv").read_text()
    assert PHI_ID not in text and PHI_NAME not in text
    png = (tmp_path / "out" / "window12.png").read_bytes()
    assert PHI_NAME.encode() not in png and PHI_ID.encode() not in png
    assert not (set(Image.open(tmp_path / "out" / "window12.png").info) - {"dpi"})  # no text chunks

    kept = prepare_folder(synthetic_dir, tmp_path / "kept", options=PrepOptions(keep_phi=True))
    assert by_input(kept.rows)["window12.dcm"]["group"] == PHI_ID


def test_resume_skips_done_and_retries_failed(synthetic_dir, tmp_path):
    dst = tmp_path / "out"
    first = prepare_folder(synthetic_dir, dst, options=opts())
    png = dst / "window12.png"
    mtime = png.stat().st_mtime_ns
    (dst / "mono1.png").unlink()  # a lost output is redone
    second = prepare_folder(synthetic_dir, dst, options=opts())
    assert second.counts["resumed"] == first.counts["ok"] - 1
    assert second.counts["ok"] == 1 and second.counts["failed"] == 2
    assert png.stat().st_mtime_ns == mtime and (dst / "mono1.png").is_file()
    assert second.rows == first.rows
    # other settings are not "done": everything is converted again
    third = prepare_folder(synthetic_dir, dst, options=opts(window="minmax"))
    assert third.counts["resumed"] == 0 and third.counts["ok"] == first.counts["ok"]


def test_all_frames_16_bit_and_size(synthetic_dir, tmp_path):
    summary = prepare_folder(
        synthetic_dir / "sub" / "deeper",
        tmp_path / "out",
        options=opts(all_frames=True, bits=16, size=24, window="none"),
    )
    assert [r["path"] for r in summary.rows] == [f"multiframe_f000{i}.png" for i in range(3)]
    frames = [np.asarray(Image.open(tmp_path / "out" / r["path"])) for r in summary.rows]
    assert all(f.dtype == np.uint16 and f.shape == (16, 24) for f in frames)
    assert frames[0].mean() > frames[1].mean() > frames[2].mean()  # frame k is frame 0 // (k + 1)


def test_strict_skips_wrong_headers(synthetic_dir, tmp_path):
    rows = by_input(prepare_folder(synthetic_dir, tmp_path / "out", options=opts(strict=True)).rows)
    assert rows["ct_head.dcm"]["status"] == "skipped"
    assert (
        rows["ct_head.dcm"]["error"]
        == "header checks failed (--strict): modality CT is not CR/DX/DR; body part HEAD is not chest"
    )
    assert rows["window12.dcm"]["status"] == "ok" and rows["window12.dcm"]["checks"] == ""


def test_workers_give_the_same_rows(synthetic_dir, tmp_path):
    one = prepare_folder(synthetic_dir, tmp_path / "a", options=opts(), workers=1)
    two = prepare_folder(synthetic_dir, tmp_path / "b", options=opts(), workers=2)
    assert one.rows == two.rows
    for r in one.rows:
        if r["path"]:
            assert (tmp_path / "a" / r["path"]).read_bytes() == (tmp_path / "b" / r["path"]).read_bytes()


def test_usage_errors(synthetic_dir, tmp_path):
    with pytest.raises(CxrError, match="must differ"):
        prepare_folder(synthetic_dir, synthetic_dir, options=opts())
    with pytest.raises(CxrError, match="no such file"):
        prepare_folder(tmp_path / "missing", tmp_path / "out", options=opts())
    with pytest.raises(CxrError, match="--bits"):
        opts(bits=12)
    with pytest.raises(CxrError, match="salt"):
        PrepOptions()


def test_output_inside_source_is_not_reread(synthetic_dir):
    dst = synthetic_dir / "png"
    first = prepare_folder(synthetic_dir, dst, options=opts())
    second = prepare_folder(synthetic_dir, dst, options=opts())
    assert not any(r["input"].startswith("png/") for r in second.rows)
    assert len(second.rows) == len(first.rows)


def test_output_names():
    assert output_name(Path("a/b.DCM")) == "b.png"
    assert output_name(Path("IM0001")) == "IM0001.png"
    assert output_name(Path("scan.v2")) == "scan.v2.png"


@pytest.mark.shared_data
def test_header_checks_on_nih_files(shared_data):
    chest = shared_data / "dicom" / "chest"
    checks = {
        n: header_checks(read_dataset(chest / f"udacity_nih_test{n}.dcm", stop_before_pixels=True))
        for n in (1, 4, 5, 6)
    }
    assert checks == {
        1: [],
        4: ["body part RIBCAGE is not chest"],
        5: ["modality CT is not CR/DX/DR"],
        6: ["unusual view/position XX"],
    }
