"""The predict pipeline: every input mode, broken files, resume, crash safety, shards, bounded queue."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from infer_helpers import CLASSES, write_bad_files, write_good_images

from cxrtool.errors import CxrError
from cxrtool.infer.decode_pool import CRASH_REASON, decode_file, iter_decoded
from cxrtool.infer.jobs import iter_jobs, parse_shard, shard_of
from cxrtool.infer.predict import PredictOptions, predict_to_file


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def direct_probs(ckpt: Path, paths: list[Path]) -> dict[str, np.ndarray]:
    """The same model run by hand, one file at a time: what the pipeline must reproduce."""
    from cxrtool.infer.loading import load_backend

    engine = load_backend(ckpt, backend="torch")
    return {
        str(p): engine.card.task.probs(engine.run(decode_file(str(p), engine.card.preprocess)[None]))[0] for p in paths
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
        predict_to_file(
            [folder], tiny_ckpt, out, PredictOptions(batch_size=2, workers=1), on_rows=die_after_two_batches
        )
    assert [r["path"] for r in read_csv(out)] == seen  # everything reported finished is on disk

    with open(out, "a", encoding="utf-8") as fh:  # and a row torn in the middle of a write
        fh.write(f"{folder / 'rgb.bmp'},normal,0.1")
    summary = predict_to_file([folder], tiny_ckpt, out, PredictOptions(batch_size=2, workers=1, resume=True))
    paths = [r["path"] for r in read_csv(out)]
    assert sorted(paths) == sorted(str(p) for p in good) and len(paths) == len(set(paths))
    assert summary.skipped_resume == len(seen) and summary.predicted == len(good) - len(seen)


def test_the_decode_pool_is_shut_down_before_predict_returns_even_on_an_error(tiny_ckpt, tmp_path):
    """A consumer error mid-run: the decode workers are gone when predict_to_file raises, not at garbage collection."""
    import multiprocessing

    write_good_images(tmp_path / "in")

    def fail(rows):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full") as excinfo:  # its traceback keeps predict's frame alive
        options = PredictOptions(batch_size=2, workers=2)
        predict_to_file([tmp_path / "in"], tiny_ckpt, tmp_path / "p.csv", options, on_rows=fail)
    assert excinfo.traceback and not multiprocessing.active_children()


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


def test_shards_are_stable_across_processes(tmp_path):
    """A fresh interpreter (new hash seed) assigns every key to the same shard as this one."""
    keys = [f"site/{i:03d}/film.dcm" for i in range(40)] + ["sub/l.jpeg", "caf\udce9.png"]
    here = [shard_of(k, 4) for k in keys]
    code = (
        "import json, sys\n"
        "from cxrtool.infer.jobs import shard_of\n"
        "keys = json.loads(sys.stdin.read())\n"
        "print(json.dumps([shard_of(k, 4) for k in keys]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # hash() would differ from this process's
    done = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(keys), capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(done.stdout) == here
    assert len(set(here)) == 4  # 42 keys over 4 shards: a constant function could not pass


@pytest.mark.parametrize("text", ["0/3", "4/3", "1/0", "a/b", "2", "1/2/3", " 1/2", "+1/2", "1/2 "])
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
def test_onnx_backends_predict_the_same_as_torch_on_real_films(
    tiny_ckpt, tiny_onnx, real_dicoms, shared_data, tmp_path
):
    from cxrtool.infer.loading import available_backends, load_backend

    films = sorted((shared_data / "covid3" / "covid").iterdir())[:8] + real_dicoms
    ref = predict_to_file(films, tiny_ckpt, tmp_path / "torch.csv", PredictOptions(workers=1))
    assert ref.failed == 0
    want = {r["path"]: r for r in read_csv(tmp_path / "torch.csv")}
    for name in available_backends(tiny_onnx):
        engine = load_backend(tiny_onnx, backend=name)
        # OpenVINO's default precision is bf16 on CPUs that list BF16 (8 mantissa bits): ~1e-3 on a probability
        tol = 1e-2 if getattr(engine, "precision", "f32") == "bf16" else 1e-4
        out = tmp_path / f"{name}.csv"
        predict_to_file(films, engine, out, PredictOptions(workers=1))
        for r in read_csv(out):
            assert r["backend"] == name and r["model_id"].startswith("tiny@")
            assert r["predicted"] == want[r["path"]]["predicted"], name
            for c in CLASSES:
                assert abs(float(r[f"p:{c}"]) - float(want[r["path"]][f"p:{c}"])) < tol, name


def constant_head_ckpt(tiny_ckpt: Path, dst: Path, bias: list[float], task) -> Path:
    """The tiny model with a zeroed classifier: its logits are ``bias`` for every input."""
    import dataclasses

    import torch

    from cxrtool.models.checkpoint import load_checkpoint, save_checkpoint

    model, card = load_checkpoint(tiny_ckpt)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor(bias))
    return save_checkpoint(dst, model, dataclasses.replace(card, task=task))


@pytest.mark.parametrize("threshold, expected", [(0.6, "covid|normal"), (0.7, "covid")])
def test_multilabel_rows_join_every_class_at_the_cards_threshold_with_a_bar(tiny_ckpt, tmp_path, threshold, expected):
    from cxrtool.task import Multilabel

    # sigmoid(2, 0.5, -3) = 0.881, 0.622, 0.047: the card's threshold decides whether "normal" is in
    ckpt = constant_head_ckpt(tiny_ckpt, tmp_path / "ml.safetensors", [2.0, 0.5, -3.0], Multilabel(threshold=threshold))
    folder = tmp_path / "in"
    good = write_good_images(folder)
    summary = predict_to_file([folder], ckpt, tmp_path / "p.csv", PredictOptions(workers=0))
    rows = read_csv(tmp_path / "p.csv")
    assert [r["predicted"] for r in rows] == [expected] * len(good)
    assert float(rows[0]["p:normal"]) == pytest.approx(0.622459, abs=1e-6)
    assert summary.per_class == {expected: len(good)}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_model_output_that_is_not_finite_becomes_an_error_row(tiny_ckpt, tmp_path, bad):
    ckpt = constant_head_ckpt(tiny_ckpt, tmp_path / "broken.safetensors", [bad, 0.0, 0.0], "multiclass")
    folder = tmp_path / "in"
    good = write_good_images(folder)
    out = tmp_path / "p.jsonl"
    summary = predict_to_file([folder], ckpt, out, PredictOptions(workers=0))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert (summary.predicted, summary.failed) == (0, len(good))
    assert len(rows) == len(good)
    assert all(r["probabilities"] is None and r["predicted"] is None and "not finite" in r["error"] for r in rows)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_file_name_that_is_not_utf8_is_kept_byte_for_byte_and_resumed(tiny_ckpt, tmp_path, suffix):
    folder = tmp_path / "in"
    folder.mkdir()
    latin1 = os.fsdecode(b"caf\xe9.png")  # a Windows-share name: \xe9 is not valid UTF-8
    write_good_images(tmp_path / "src")
    (folder / latin1).write_bytes((tmp_path / "src" / "l.png").read_bytes())
    (folder / "plain.png").write_bytes((tmp_path / "src" / "l.png").read_bytes())
    out = tmp_path / f"p{suffix}"
    summary = predict_to_file([folder], tiny_ckpt, out, PredictOptions(workers=0))
    assert (summary.predicted, summary.failed) == (2, 0)
    assert os.fsencode(folder) + b"/caf\xe9.png" in out.read_bytes()  # the name's own bytes, not a replacement
    again = predict_to_file([folder], tiny_ckpt, out, PredictOptions(workers=0, resume=True))
    assert (again.predicted, again.skipped_resume) == (0, 2)  # read back, the name matches the file on disk


@pytest.mark.parametrize(
    ("cores", "backend", "device", "expected"),
    [
        (2, "onnxruntime", "cpu", 0),  # a graph runtime keeps both cores busy: a decoder would only preempt it
        (2, "openvino", "cpu", 0),
        (2, "torch", "cpu", 1),  # torch eager leaves gaps a niced worker fills
        (2, "onnxruntime", "cuda", 1),  # the model is on the GPU: the CPU is the decoders'
        (1, "torch", "cpu", 1),
        (4, "openvino", "cpu", 3),
        (32, "onnxruntime", "cpu", 8),
    ],
)
def test_default_decode_workers_follow_the_backend_and_the_cores(monkeypatch, cores, backend, device, expected):
    from cxrtool.infer import decode_pool

    monkeypatch.setattr(decode_pool.os, "cpu_count", lambda: cores)
    assert decode_pool.default_workers(backend, device) == expected


def test_predict_resolves_unset_workers_for_its_backend(tiny_ckpt, good_folder, tmp_path, monkeypatch):
    """``workers=None`` is decided once the backend is known (torch here: one worker on 2 cores)."""
    from cxrtool.infer import decode_pool
    from cxrtool.infer import predict as predict_mod

    seen = []
    real = predict_mod.iter_predictions

    def spy(*args, **kwargs):
        seen.append(kwargs["workers"])
        return real(*args, **kwargs)

    monkeypatch.setattr(decode_pool.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(predict_mod, "iter_predictions", spy)
    folder, _ = good_folder
    predict_to_file([folder], tiny_ckpt, tmp_path / "p.csv", PredictOptions(), backend="torch")
    assert seen == [1]
