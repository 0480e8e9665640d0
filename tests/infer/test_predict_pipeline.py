"""The predict pipeline: every input mode, broken files, resume, crash safety, shards, bounded queue."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from infer_helpers import CLASSES, write_bad_files, write_good_images

from cxrtool.errors import CxrError
from cxrtool.infer.predict import (
    CRASH_REASON,
    PredictOptions,
    decode_file,
    iter_decoded,
    iter_jobs,
    parse_shard,
    predict_to_file,
    shard_of,
)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def direct_probs(ckpt: Path, paths: list[Path]) -> dict[str, np.ndarray]:
    """The same model run by hand, one file at a time: what the pipeline must reproduce."""
    from cxrtool.infer.backends import load_backend, probabilities

    engine = load_backend(ckpt, backend="torch")
    return {
        str(p): probabilities(engine.run(decode_file(str(p), engine.card.preprocess)[None]), "multiclass")[0]
        for p in paths
    }


def test_every_input_mode_is_predicted_like_a_single_file(tiny_ckpt, good_folder, real_dicoms, tmp_path):
    folder, files = good_folder
    out = tmp_path / "preds.csv"
    summary = predict_to_file([folder, *real_dicoms], tiny_ckpt, out, PredictOptions(batch_size=4, workers=1))

    rows = read_csv(out)
    assert summary.failed == 0 and summary.predicted == len(files) + len(real_dicoms)
    assert [r["error"] for r in rows] == [""] * len(rows)
    expected = direct_probs(tiny_ckpt, [*files, *real_dicoms])
    assert sorted(r["path"] for r in rows) == sorted(expected)
    for r in rows:
        probs = np.array([float(r[f"p:{c}"]) for c in CLASSES])
        np.testing.assert_allclose(probs, expected[r["path"]], atol=2e-6)
        assert r["predicted"] == CLASSES[int(np.argmax(probs))]
        assert r["backend"] == "torch" and r["device"] == "cpu"
        assert r["model_id"].startswith("tiny@") and len(r["model_id"]) == len("tiny@") + 12
    # distinct inputs give distinct outputs, so a shuffled row order could not pass the check above
    assert len({r["p:covid"] for r in rows}) > len(rows) // 2


def test_broken_files_become_error_rows_and_never_stop_the_folder(tiny_ckpt, tmp_path):
    folder = tmp_path / "mixed"
    good = write_good_images(folder / "ok")
    bad = write_bad_files(folder / "bad")
    out = tmp_path / "preds.jsonl"
    summary = predict_to_file([folder], tiny_ckpt, out, PredictOptions(batch_size=3, workers=1))

    rows = {r["path"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {str(p) for p in [*good, *bad]}
    for p in good:
        assert rows[str(p)]["error"] is None
        assert set(rows[str(p)]["probabilities"]) == set(CLASSES)
    for p, word in bad.items():
        row = rows[str(p)]
        assert row["predicted"] is None and row["probabilities"] is None
        assert word.lower() in row["error"].lower(), (p.name, row["error"])
    assert (summary.predicted, summary.failed) == (len(good), len(bad))
    assert sum(summary.per_class.values()) == len(good)


def _crash_on_marked(path: str, cfg):
    """A decoder that kills its process on one file, as a native codec bug would."""
    if "crash" in Path(path).name:
        os._exit(3)
    return decode_file(path, cfg)


def test_a_decoder_process_crash_costs_only_its_own_file(tiny_ckpt, tmp_path):
    folder = tmp_path / "in"
    good = write_good_images(folder)
    (folder / "m_crash.png").write_bytes((folder / "l.png").read_bytes())
    summary = predict_to_file(
        [folder], tiny_ckpt, tmp_path / "p.csv", PredictOptions(batch_size=2, workers=2), decode=_crash_on_marked
    )
    rows = {r["path"]: r for r in read_csv(tmp_path / "p.csv")}
    assert rows[str(folder / "m_crash.png")]["error"] == CRASH_REASON
    assert all(rows[str(p)]["error"] == "" for p in good)
    assert (summary.predicted, summary.failed) == (len(good), 1)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_skips_recorded_files_and_keeps_no_duplicates(tiny_ckpt, tmp_path, suffix):
    folder = tmp_path / "in"
    good = write_good_images(folder)
    bad = write_bad_files(folder / "bad")
    out = tmp_path / f"p{suffix}"
    first = predict_to_file([folder], tiny_ckpt, out, PredictOptions(workers=0))
    before = out.read_text()
    again = predict_to_file([folder], tiny_ckpt, out, PredictOptions(workers=0, resume=True))
    assert (again.predicted, again.failed, again.skipped_resume) == (0, 0, len(good) + len(bad))
    assert out.read_text() == before
    assert first.predicted == len(good)


def test_a_crash_mid_run_loses_no_finished_rows_and_resume_completes(tiny_ckpt, tmp_path):
    folder = tmp_path / "in"
    good = write_good_images(folder)
    out = tmp_path / "p.csv"
    seen = []

    def die_after_two_batches(rows):
        seen.extend(r.path for r in rows)
        if len(seen) >= 4:
            raise KeyboardInterrupt  # stands in for a kill after some rows were written

    with pytest.raises(KeyboardInterrupt):
        predict_to_file([folder], tiny_ckpt, out, PredictOptions(batch_size=2, workers=1), on_rows=die_after_two_batches)
    assert [r["path"] for r in read_csv(out)] == seen  # everything reported finished is on disk

    with open(out, "a", encoding="utf-8") as fh:  # and a row torn in the middle of a write
        fh.write(f"{folder / 'rgb.bmp'},normal,0.1")
    summary = predict_to_file([folder], tiny_ckpt, out, PredictOptions(batch_size=2, workers=1, resume=True))
    paths = [r["path"] for r in read_csv(out)]
    assert sorted(paths) == sorted(str(p) for p in good) and len(paths) == len(set(paths))
    assert summary.skipped_resume == len(seen) and summary.predicted == len(good) - len(seen)


def test_resume_refuses_an_output_from_another_model(tiny_ckpt, tmp_path):
    folder = tmp_path / "in"
    write_good_images(folder)
    out = tmp_path / "p.csv"
    predict_to_file([folder], tiny_ckpt, out, PredictOptions(workers=0))
    text = out.read_text().replace("tiny@", "other@")
    out.write_text(text)
    with pytest.raises(CxrError, match="was written by model other@"):
        predict_to_file([folder], tiny_ckpt, out, PredictOptions(workers=0, resume=True))
    with pytest.raises(CxrError, match="already exists"):
        predict_to_file([folder], tiny_ckpt, out, PredictOptions(workers=0))
    assert out.read_text() == text  # refused runs leave the output alone


def test_shards_are_disjoint_and_cover_the_folder(tiny_ckpt, tmp_path):
    folder = tmp_path / "in"
    good = write_good_images(folder)
    for i in range(12):
        (folder / f"extra_{i}.png").write_bytes((folder / "l.png").read_bytes())
    everything = {str(p) for p, _ in iter_jobs([folder])}
    assert len(everything) == len(good) + 12
    parts = []
    for i in (1, 2, 3):
        out = tmp_path / f"shard{i}.csv"
        s = predict_to_file([folder], tiny_ckpt, out, PredictOptions(workers=0, shard=(i, 3)))
        parts.append({r["path"] for r in read_csv(out)})
        assert s.predicted + s.skipped_shard == len(everything)
    assert set().union(*parts) == everything
    assert sum(map(len, parts)) == len(everything)
    assert all(parts)  # 21 files over 3 shards: none empty with a sane hash


def test_shard_keys_do_not_depend_on_where_the_folder_is_mounted(tmp_path):
    a = tmp_path / "site_a" / "films"
    write_good_images(a)
    b = tmp_path / "mount_b"
    b.symlink_to(a)
    keys_a = [k for _, k in iter_jobs([a])]
    assert keys_a == [k for _, k in iter_jobs([b])]
    assert "sub/l.jpeg" in keys_a
    assert [shard_of(k, 4) for k in keys_a] == [shard_of(k, 4) for k in keys_a]


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "a/b", "2", "1/2/3"])
def test_bad_shards_are_usage_errors(text):
    with pytest.raises(CxrError, match="--shard"):
        parse_shard(text)


def test_parse_shard_reads_i_of_n():
    assert parse_shard("2/5") == (2, 5)


@pytest.mark.parametrize("workers", [0, 2])
def test_decoding_never_runs_more_than_max_pending_ahead_of_the_consumer(tmp_path, workers):
    from cxrtool.config import PreprocessCfg

    files = [str(p) for p in write_good_images(tmp_path)] * 4
    pulled = 0

    def source():
        nonlocal pulled
        for f in files:
            pulled += 1
            yield f

    consumed = 0
    for path, x, error in iter_decoded(source(), PreprocessCfg(input_size=16), workers=workers, max_pending=5):
        consumed += 1
        assert error is None and x.shape == (3, 16, 16)
        assert pulled - consumed <= (5 if workers else 0)
    assert consumed == pulled == len(files)


def test_output_suffix_and_options_are_checked_before_any_work(tiny_ckpt, tmp_path):
    with pytest.raises(CxrError, match=r"\.csv or \.jsonl"):
        predict_to_file([tmp_path], tiny_ckpt, tmp_path / "p.xlsx")
    with pytest.raises(CxrError, match="exclude"):
        PredictOptions(resume=True, overwrite=True)
    with pytest.raises(CxrError, match="batch size"):
        PredictOptions(batch_size=0)


@pytest.mark.slow
def test_onnx_backends_predict_the_same_as_torch_on_real_films(tiny_ckpt, tiny_onnx, real_dicoms, shared_data, tmp_path):
    from cxrtool.infer.backends import available_backends

    films = sorted((shared_data / "covid3" / "covid").iterdir())[:8] + real_dicoms
    ref = predict_to_file(films, tiny_ckpt, tmp_path / "torch.csv", PredictOptions(workers=1))
    assert ref.failed == 0
    want = {r["path"]: r for r in read_csv(tmp_path / "torch.csv")}
    for name in available_backends(tiny_onnx):
        out = tmp_path / f"{name}.csv"
        predict_to_file(films, tiny_onnx, out, PredictOptions(workers=1), backend=name)
        for r in read_csv(out):
            assert r["backend"] == name and r["model_id"].startswith("tiny@")
            assert r["predicted"] == want[r["path"]]["predicted"], name
            for c in CLASSES:
                assert abs(float(r[f"p:{c}"]) - float(want[r["path"]][f"p:{c}"])) < 1e-4, name
