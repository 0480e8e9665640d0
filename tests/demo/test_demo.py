"""``cxrtool demo`` end to end on a cut-down copy of the shipped sample, and the sample's licence bookkeeping."""

from __future__ import annotations

import csv
import hashlib
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.demo.workflow import ATTRIBUTION, SAMPLE, DemoSize, prepare_out, run_demo, write_marker
from cxrtool.errors import CxrError
from cxrtool.manifest import read_manifest
from cxrtool.modelfile import read_card

ALLOWED_LICENCES = (
    "NIH Clinical Center: no restrictions on use",
    "NEMA WG04 public conformance sample",
    "public DICOM conformance sample",
    "as its source",
)


def test_sample_is_small_and_every_file_attributed():
    files = sorted(p for p in SAMPLE.rglob("*") if p.is_file())
    assert sum(p.stat().st_size for p in files) <= 5_000_000
    rows = {}
    for line in ATTRIBUTION.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"\| (sample/\S+) \| (.+) \| (.+) \| `([0-9a-f]{64})` \|", line)
        if m:
            rows[m.group(1)] = (m.group(3), m.group(4))
    assert set(rows) == {p.relative_to(SAMPLE.parent).as_posix() for p in files}
    for p in files:
        licence, digest = rows[p.relative_to(SAMPLE.parent).as_posix()]
        assert hashlib.sha256(p.read_bytes()).hexdigest() == digest, p
        assert licence.startswith(ALLOWED_LICENCES), licence


def _small_sample(dst: Path, n_per_class: int = 14) -> Path:
    """The real sample cut to a few films per stage-2 class (all splits kept) and the smallest DICOM."""
    nih = SAMPLE / "nih"
    header, *lines = (nih / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    test = set((nih / "test_list.txt").read_text().split())
    picked, seen = [], {}
    for ln in lines:
        labels = ln.split(",")[1]
        kind = (
            "normal"
            if labels == "No Finding"
            else "effusion"
            if labels == "Effusion"
            else "opacity"
            if labels in ("Infiltration", "Consolidation", "Pneumonia")
            else ""
        )
        key = (kind, ln.split(",")[0] in test)
        if kind and seen.get(key, 0) < n_per_class:
            seen[key] = seen.get(key, 0) + 1
            picked.append(ln)
    names = {ln.split(",")[0] for ln in picked}
    (dst / "nih" / "images").mkdir(parents=True)
    (dst / "nih" / "Data_Entry_2017_v2020.csv").write_text("\n".join([header, *picked]) + "\n")
    for lst in ("train_val_list.txt", "test_list.txt"):
        (dst / "nih" / lst).write_text("\n".join(n for n in (nih / lst).read_text().split() if n in names) + "\n")
    for n in names:
        shutil.copyfile(nih / "images" / n, dst / "nih" / "images" / n)
    (dst / "dicom").mkdir()
    shutil.copyfile(SAMPLE / "dicom" / "CR-MONO1-10-chest.dcm", dst / "dicom" / "CR-MONO1-10-chest.dcm")
    return dst


def test_demo_end_to_end_small(tmp_path: Path, tiny_arch: str):
    sample = _small_sample(tmp_path / "sample")
    steps: list[tuple[int, str, str]] = []
    size = DemoSize(
        arch=tiny_arch, input_size=32, stage1_epochs=1, stage2_epochs=1, batch_size=16, scan_films=4, bootstrap=10
    )
    out = tmp_path / "demo"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "extra.txt").write_text("x")
    write_marker(out)  # an earlier demo that wrote runs/extra.txt
    notes: list[str] = []
    res = run_demo(
        out,
        size=size,
        sample=sample,
        on_step=lambda n, total, title, detail: steps.append((n, title, detail)),
        on_note=notes.append,
    )
    assert [s[1] for s in steps] == [
        "prep dicom",
        "prep nih",
        "train stage 1",
        "train stage 2",
        "evaluate",
        "export --onnx",
        "predict",
        "explain",
        "report",
        "done",
    ]
    assert (
        "not a diagnostic model" in notes[-1] and "not a diagnostic model" not in steps[-1][2]
    )  # one message per line

    stage1, stage2 = read_card(res.files["stage1"]), read_card(res.files["stage2"])
    assert stage1.task.name == "multilabel" and len(stage1.class_names) == 14
    assert stage2.class_names == ["effusion", "normal", "opacity"] and stage2.task.name == "multiclass"
    assert stage2.config["keep_neurons"] and stage2.config["keep_map"] == {
        "effusion": "Effusion",
        "opacity": "Pneumonia",
    }
    assert stage2.lineage and stage2.config["init"] == str(res.files["stage1"])

    with open(res.files["predictions"], newline="") as fh:
        preds = list(csv.DictReader(fh))
    assert len(preds) == 4 + 1 + 1  # test thumbnails, the DICOM, the truncated file
    bad = [r for r in preds if r["error"]]
    assert [Path(r["path"]).name for r in bad] == ["truncated_download.png"]
    assert all(r["backend"] == "onnxruntime" for r in preds)
    with open(out / "heatmaps" / "explain.csv", newline="") as fh:  # the explain step checks OOD like the CLI
        explained = {Path(r["path"]).name: r for r in csv.DictReader(fh) if not r.get("error")}
    good = {Path(r["path"]).name: r for r in preds if not r["error"]}
    assert explained and set(explained) <= set(good)
    for name, row in explained.items():
        assert row["ood_score"] != "" and abs(float(row["ood_score"]) - float(good[name]["ood_score"])) < 1e-3, (
            name,
            row,
        )
        assert row["flag"] == good[name]["flag"]
    assert (out / "eval" / "metrics.json").is_file() and res.files["onnx"].suffix == ".onnx"
    html = res.report.read_text(encoding="utf-8")
    assert "not a diagnostic model" in html and html.count("data:image/png;base64,") >= 2 * 5
    assert "truncated_download.png" in html and "Model card" in html
    assert read_manifest(out / "nih3.csv").class_names == ["effusion", "normal", "opacity"]

    assert not (out / "runs" / "extra.txt").exists()  # an earlier demo folder is replaced
    assert (
        "runs/stage2/best.safetensors" in (out / "DEMO.txt").read_text().splitlines()
    )  # and its listing is the new one
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(CxrError, match="not an untouched earlier demo"):
        run_demo(other, size=size, sample=sample)
    assert (other / "thesis.tex").read_text() == "x"


def test_demo_help_says_what_it_is():
    res = CliRunner().invoke(app, ["demo", "--help"])
    assert res.exit_code == 0 and "not diagnostic" in res.output


# --- the output folder: checked before any work, and only the demo's own folder is ever emptied ---------------------


@pytest.fixture()
def read_only_dir(tmp_path: Path):
    """A folder on a read-only tmpfs mount (root's access() says writable there; only the mount flag tells)."""
    import subprocess

    mnt = tmp_path / "ro"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here ({done.stderr.decode(errors='replace').strip()})")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def _demo_cli(out: Path):
    return CliRunner().invoke(app, ["demo", str(out)])


def test_demo_into_a_read_only_folder_is_exit_2_before_any_work(read_only_dir: Path) -> None:
    res = _demo_cli(read_only_dir / "demo")
    assert res.exit_code == 2 and "read-only" in res.output, res.output


def test_demo_under_proc_is_exit_2(tmp_path: Path) -> None:
    res = _demo_cli(Path("/proc/cxrtool-demo"))
    assert res.exit_code == 2 and "kernel filesystem" in res.output, res.output


def test_demo_into_a_symlink_is_refused_and_the_target_kept(tmp_path: Path) -> None:
    target = tmp_path / "real"
    target.mkdir()
    (target / "thesis.tex").write_text("x")
    write_marker(target)
    link = tmp_path / "link"
    link.symlink_to(target)
    res = _demo_cli(link)
    assert res.exit_code == 2 and "symbolic link" in res.output, res.output
    assert (target / "thesis.tex").read_text() == "x" and link.is_symlink()


def test_a_folder_with_a_foreign_demo_txt_is_never_deleted(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "DEMO.txt").write_text("my notes about the demo\n")
    (out / "thesis.tex").write_text("x")
    res = _demo_cli(out)
    assert res.exit_code == 2 and "not an untouched earlier demo" in res.output, res.output
    assert (out / "thesis.tex").read_text() == "x" and (out / "DEMO.txt").is_file()


def test_an_earlier_demo_with_a_users_file_added_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "a.csv").write_text("a")
    write_marker(out)
    (out / "runs" / "my_notes.txt").write_text("keep me")  # added after the demo wrote its listing
    with pytest.raises(CxrError, match="not an untouched earlier demo"):
        prepare_out(out)
    assert (out / "runs" / "my_notes.txt").read_text() == "keep me" and (out / "runs" / "a.csv").exists()


def test_an_untouched_earlier_demo_is_emptied_but_the_folder_kept(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "a.csv").write_text("a")
    (out / ".salt").write_text("s")
    write_marker(out)
    inode = out.stat().st_ino
    prepare_out(out)
    assert (
        out.is_dir() and list(out.iterdir()) == [] and out.stat().st_ino == inode
    )  # a mount point stays a mount point
