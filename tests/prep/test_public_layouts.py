"""The public datasets' download layouts -> manifests, on small trees built from the shipped ChestX-ray14 thumbnails."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.errors import CxrError
from cxrtool.manifest import read_manifest
from cxrtool.prep.covidx import parse_line, prep_covidx
from cxrtool.prep.kermany import parse_name, prep_kermany
from cxrtool.prep.layouts import LayoutOptions
from cxrtool.prep.radiography import prep_radiography
from cxrtool.prep.splits import crossing_groups

SAMPLE = Path(__file__).resolve().parents[2] / "cxrtool" / "demo" / "sample" / "nih"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _salt(monkeypatch):
    monkeypatch.setenv("CXRTOOL_SALT", "test-salt")


@pytest.fixture(scope="module")
def films() -> list[Path]:
    """Real chest films (64 px ChestX-ray14 thumbnails shipped with the demo), one per patient."""
    seen, out = set(), []
    for p in sorted((SAMPLE / "images").glob("*.png")):
        if p.name[:8] not in seen:
            seen.add(p.name[:8])
            out.append(p)
    assert len(out) >= 60
    return out


def _put(films: list[Path], k: int, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(films[k % len(films)], dst)
    return dst


def _radiography_tree(root: Path, films: list[Path]) -> Path:
    ds = root / "COVID-19_Radiography_Dataset"
    k = 0
    for cls, stem in (
        ("COVID", "COVID"),
        ("Normal", "Normal"),
        ("Viral Pneumonia", "Viral Pneumonia"),
        ("Lung_Opacity", "Lung_Opacity"),
    ):
        for i in range(1, 7):
            _put(films, k, ds / cls / "images" / f"{stem}-{i}.png")
            _put(films, k, ds / cls / "masks" / f"{stem}-{i}.png")
            k += 1
        (ds / f"{cls}.metadata.xlsx").write_bytes(b"PK not read")
    (ds / "Normal" / "images" / "Normal-99.png").write_bytes(b"truncated download")
    (ds / "README.md.txt").write_text("COVID-19 CHEST X-RAY DATABASE\n")
    return root


def test_radiography_current_release(tmp_path: Path, films):
    root = _radiography_tree(tmp_path / "dl", films)
    out = tmp_path / "m.csv"
    report = prep_radiography(root, out, LayoutOptions(val_fraction=0.2, test_fraction=0.2), salt="s")
    m = read_manifest(out)
    assert Counter(r["label"] for r in m.rows) == {"covid": 6, "normal": 6, "viral_pneumonia": 6}
    assert all("/images/" in r["path"] and "/masks/" not in r["path"] for r in m.rows)
    assert report.dropped == {"class 'Lung_Opacity' excluded": 6}
    assert report.ignored["lung masks"] == 24 and report.ignored["metadata spreadsheets"] == 4
    assert [p for p, _ in report.failed] == [
        str(root / "COVID-19_Radiography_Dataset" / "Normal" / "images" / "Normal-99.png")
    ]
    assert not report.ok  # an unreadable file is named and makes the exit code 1
    assert {r["split"] for r in m.rows} == {"train", "val", "test"}
    assert not crossing_groups([r["dup_group"] for r in m.rows], [r["split"] for r in m.rows])
    assert {r["dataset_class"] for r in m.rows} == {"COVID", "Normal", "Viral Pneumonia"}


def test_radiography_lung_opacity_on_request_and_first_release(tmp_path: Path, films):
    root = _radiography_tree(tmp_path / "dl", films)
    out = tmp_path / "m.csv"
    res = runner.invoke(
        app,
        [
            "prep",
            "radiography",
            str(root),
            "-o",
            str(out),
            "--map",
            "Lung_Opacity=lung_opacity",
            "--exclude",
            "Viral Pneumonia",
        ],
    )
    assert res.exit_code == 1, res.output  # the truncated file
    assert "Normal-99.png" in res.stderr and str(out) in res.stdout
    assert Counter(r["label"] for r in read_manifest(out).rows) == {"covid": 6, "normal": 6, "lung_opacity": 6}
    assert (
        runner.invoke(app, ["prep", "radiography", str(root), "-o", str(out), "--map", "Pneumothorax=x"]).exit_code == 2
    )

    v1 = tmp_path / "v1"  # first release: images directly in COVID-19/, NORMAL/, Viral Pneumonia/
    for k, cls in enumerate(("COVID-19", "NORMAL", "Viral Pneumonia")):
        for i in range(4):
            _put(films, 10 * k + i, v1 / cls / f"{cls} ({i + 1}).png")
    report = prep_radiography(v1, tmp_path / "v1.csv", salt="s")
    assert report.ok and Counter(r["label"] for r in read_manifest(tmp_path / "v1.csv").rows) == {
        "covid": 4,
        "normal": 4,
        "viral_pneumonia": 4,
    }


def test_covidx_parse_line():
    assert parse_line("419639-003251 MIDRC-RICORD-1C-419639-003251-46647-0.png positive rsna") == (
        "419639-003251",
        "MIDRC-RICORD-1C-419639-003251-46647-0.png",
        "positive",
        "rsna",
    )
    assert parse_line("3 COVID-19 (12).png COVID-19 sirm") == ("3", "COVID-19 (12).png", "COVID-19", "sirm")
    assert parse_line("8 SARS-10.jpeg pneumonia") == ("8", "SARS-10.jpeg", "pneumonia", "")
    with pytest.raises(ValueError):
        parse_line("just two")


def _covidx_tree(root: Path, films: list[Path], *, leak: bool = False) -> Path:
    classes = ("normal", "pneumonia", "COVID-19")
    train, test = [], []
    for i in range(30):
        patient = f"p{i // 2:03d}"  # two films per patient
        name = f"img {i:03d}.png" if i == 5 else f"img{i:03d}.png"
        _put(films, i, root / "train" / name)
        train.append(f"{patient} {name} {classes[i % 3]} src{i % 2}")
    for i in range(9):
        name = f"t{i:03d}.png"
        _put(films, 30 + i, root / "test" / name)
        test.append(f"{'p000' if leak and i == 0 else f'q{i:03d}'} {name} {classes[i % 3]} src0")
    train.append("p999 not_downloaded.png normal src0")
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")
    return root


def test_covidx_patient_wise(tmp_path: Path, films):
    root = _covidx_tree(tmp_path / "covidx", films)
    out = tmp_path / "m.csv"
    report = prep_covidx(root, out, LayoutOptions(val_fraction=0.2), salt="s")
    m = read_manifest(out)
    assert report.missing == ["train.txt: not_downloaded.png"] and not report.ok
    assert len(m.rows) == 39 and report.official_splits == ["train", "test"]
    assert Counter(r["split"] for r in m.rows)["test"] == 9
    assert Counter(r["split"] for r in m.rows)["val"] > 0
    assert not crossing_groups([r["group"] for r in m.rows], [r["split"] for r in m.rows])
    assert {r["label"] for r in m.rows} == {"normal", "pneumonia", "covid"}
    assert any(r["path"].endswith("img 005.png") for r in m.rows)
    assert {r["source"] for r in m.rows} == {"covidx-cxr/src0", "covidx-cxr/src1"}


def test_covidx_leaking_official_split_is_reported(tmp_path: Path, films):
    root = _covidx_tree(tmp_path / "covidx", films, leak=True)
    (root / "train.txt").write_text(
        "".join(ln + "\n" for ln in (root / "train.txt").read_text().splitlines() if "not_downloaded" not in ln)
    )
    report = prep_covidx(root, tmp_path / "m.csv", LayoutOptions(dedup=False), salt="s")
    assert report.patients_crossing == 1 and not report.ok
    with pytest.raises(CxrError, match="split files"):
        prep_covidx(tmp_path / "covidx" / "train", tmp_path / "x.csv", salt="s")


def test_kermany_names():
    assert parse_name("person1_virus_6.jpeg", "PNEUMONIA") == ("virus", "person1")
    assert parse_name("person1000_bacteria_2931.jpeg", "PNEUMONIA") == ("bacteria", "person1000")
    assert parse_name("IM-0115-0001.jpeg", "NORMAL") == ("normal", "IM-0115")
    assert parse_name("NORMAL2-IM-1427-0001.jpeg", "NORMAL") == ("normal", "NORMAL2-IM-1427")
    assert parse_name("scan.jpeg", "PNEUMONIA") is None


def test_kermany_layout(tmp_path: Path, films):
    base = tmp_path / "archive" / "chest_xray" / "chest_xray"  # Kaggle's doubled folder
    k = 0
    for split, n in (("train", 8), ("val", 2), ("test", 3)):
        for i in range(n):
            _put(films, k, base / split / "NORMAL" / f"IM-{k:04d}-0001.jpeg")
            k += 1  # noqa: E702
            _put(films, k, base / split / "PNEUMONIA" / f"person{k}_virus_{k}.jpeg")
            k += 1  # noqa: E702
            _put(films, k, base / split / "PNEUMONIA" / f"person{k}_bacteria_{k}.jpeg")
            _put(films, k + 1, base / split / "PNEUMONIA" / f"person{k}_bacteria_{k + 100}.jpeg")
            k += 2  # noqa: E702
    (base / "train" / "PNEUMONIA" / "unnamed.jpeg").write_bytes(
        (base / "train" / "NORMAL" / "IM-0000-0001.jpeg").read_bytes()
    )
    out = tmp_path / "m.csv"
    res = runner.invoke(
        app, ["prep", "kermany", str(tmp_path / "archive"), "-o", str(out), "--val-fraction", "0.25", "--keep-phi"]
    )
    assert res.exit_code == 0, res.output
    m = read_manifest(out)
    assert Counter(r["label"] for r in m.rows) == {"normal": 13, "viral_pneumonia": 13, "bacterial_pneumonia": 26}
    by_split = Counter((r["official_split"], r["split"]) for r in m.rows)
    assert by_split[("test", "test")] == 12 and by_split[("val", "val")] == 8 and by_split[("train", "val")] > 0
    assert not crossing_groups([r["group"] for r in m.rows], [r["split"] for r in m.rows])
    assert all(r["group"].startswith(("IM-", "person")) for r in m.rows)  # --keep-phi: the names' ids
    report = prep_kermany(tmp_path / "archive", out, LayoutOptions(exclude=("bacteria",)), salt="s")
    assert report.dropped["class 'bacteria' excluded"] == 26
    assert report.dropped["PNEUMONIA file named neither _bacteria_ nor _virus_"] == 1


def test_nih_full_image_folders(tmp_path: Path):
    """Kaggle's images_001/images/ ... images_012/images/ layout: --images ROOT finds every film by name."""
    names = sorted(p.name for p in (SAMPLE / "images").glob("*.png"))[:36]
    root = tmp_path / "nih"
    for i, name in enumerate(names):
        _put([SAMPLE / "images" / name], 0, root / f"images_{i // 3 + 1:03d}" / "images" / name)
    lines = (SAMPLE / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    (root / "Data_Entry_2017.csv").write_text(
        "\n".join([lines[0], *(ln for ln in lines[1:] if ln.split(",")[0] in names[:35] or ln.startswith(names[35]))])
        + "\n"
    )
    (root / "images_012" / "images" / names[-1]).unlink()  # one film missing from the download
    out = tmp_path / "nih.csv"
    res = runner.invoke(app, ["prep", "nih", str(root / "Data_Entry_2017.csv"), "--images", str(root), "-o", str(out)])
    assert res.exit_code == 1 and names[-1] in res.stderr  # kept with status=missing, named
    rows = read_manifest(out).rows
    assert len(rows) == 36 and sum(r["status"] == "ok" for r in rows) == 35
    assert {Path(r["path"]).parts[-3] for r in rows if r["status"] == "ok"} == {f"images_{i:03d}" for i in range(1, 13)}


def test_covidx_own_val_file_is_kept(tmp_path: Path, films):
    root = _covidx_tree(tmp_path / "covidx", films)
    _put(films, 50, root / "val" / "v0.png")
    (root / "val.txt").write_text("r001 v0.png normal src1\n")
    report = prep_covidx(root, tmp_path / "m.csv", LayoutOptions(val_fraction=0.3, dedup=False), salt="s")
    rows = read_manifest(tmp_path / "m.csv").rows
    assert report.official_splits == ["train", "val", "test"]
    assert [Path(r["path"]).name for r in rows if r["split"] == "val"] == ["v0.png"]  # nothing carved out of train
