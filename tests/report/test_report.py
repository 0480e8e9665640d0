"""``cxrtool report``: predict rows -> one self-contained page; rendered for real in headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxrtool.cli.main import app
from cxrtool.report.html import build_report
from cxrtool.report.inputs import read_predictions

SAMPLE = Path(__file__).resolve().parents[2] / "cxrtool" / "demo" / "sample"
CLASSES = ["effusion", "normal", "opacity"]
runner = CliRunner()


class _Page(HTMLParser):
    """Collects what the assertions look at: images, rows of the films table, external references, text."""

    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[str] = []
        self.external: list[str] = []
        self.ids: set[str] = set()
        self.rows = 0
        self._in_films = False
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "table" and a.get("id") == "films-table":
            self._in_films = True
        if tag == "tr" and self._in_films:
            self.rows += 1
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("data:"):
                self.external.append(a[key])

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_films = False

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture()
def run(tmp_path: Path) -> dict[str, Path]:
    """A predict CSV with the newer flag / ood_score columns, films on disk, an error row, an explain folder."""
    films = sorted((SAMPLE / "nih" / "images").glob("*.png"))[:5]
    scans = tmp_path / "scans"
    scans.mkdir()
    for f in films:
        shutil.copyfile(f, scans / f.name)
    odd = scans / "scan <b>&[1].png"  # a name that is markup in HTML and in Rich
    shutil.copyfile(films[0], odd)
    shutil.copyfile(SAMPLE / "dicom" / "CR-MONO1-10-chest.dcm", scans / "cr.dcm")
    paths = [*(scans / f.name for f in films), odd, scans / "cr.dcm"]
    flags = ["ok", "ok", "out_of_distribution", "ok", "header:BodyPartExamined=RIBCAGE", "ok", "ok"]
    rng = np.random.default_rng(0)
    out = tmp_path / "preds.csv"
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "path",
                "predicted",
                *[f"p:{c}" for c in CLASSES],
                "ood_score",
                "flag",
                "model_id",
                "backend",
                "device",
                "error",
            ]
        )
        for p, flag in zip(paths, flags):
            probs = rng.dirichlet(np.ones(3))
            w.writerow(
                [
                    str(p),
                    CLASSES[int(probs.argmax())],
                    *[f"{v:.6f}" for v in probs],
                    f"{rng.random() * 3:.4f}",
                    flag,
                    "best@0123456789ab",
                    "onnxruntime",
                    "cpu",
                    "",
                ]
            )
        w.writerow(
            [
                str(scans / "gone.png"),
                "",
                "",
                "",
                "",
                "",
                "",
                "best@0123456789ab",
                "onnxruntime",
                "cpu",
                "truncated image (broken data stream)",
            ]
        )
    explain = tmp_path / "heatmaps"
    explain.mkdir()
    with open(explain / "explain.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "target", "overlay", "error"])
        for i, p in enumerate(paths[:3]):
            ov = explain / f"{i}.overlay.png"
            Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(ov)
            w.writerow([str(p), "normal", str(ov), ""])
    return {"preds": out, "explain": explain, "odd": odd}


def test_page_is_self_contained_and_complete(run, tmp_path: Path):
    html = tmp_path / "r.html"
    result = build_report(run["preds"], html, explain_dir=run["explain"], caveats=["demo only"])
    page = _parse(html)
    assert (result.rows, result.errors, result.flagged, result.thumbnails, result.overlays) == (8, 1, 2, 7, 3)
    assert not page.external, page.external  # nothing loaded from anywhere
    assert all(src.startswith("data:image/png;base64,") for src in page.imgs) and len(page.imgs) == 10
    assert {"summary", "films", "errors", "flagged", "films-table"} <= page.ids
    assert page.rows == 1 + 7  # header + every readable film
    text = " ".join(page.text)
    assert "truncated image (broken data stream)" in text and "gone.png" in text
    assert "header:BodyPartExamined=RIBCAGE" in text and "out_of_distribution" in text
    assert "demo only" in text and "not a medical device" in text
    assert "heatmap-legend" in page.ids and "blue: against" in text
    assert "red: evidence for the class the heatmap explains" in text
    raw = html.read_text()
    assert "scan <b>&[1].png" not in raw and "scan &lt;b&gt;&amp;[1].png" in raw  # escaped, never markup
    assert raw.count('class="flagged"') == 2


def test_older_and_jsonl_outputs_render(run, tmp_path: Path):
    rows = list(csv.DictReader(run["preds"].open()))
    old = tmp_path / "old.csv"  # a predict output from before the flag / ood columns existed
    with open(old, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[k for k in rows[0] if k not in ("flag", "ood_score")], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    build_report(old, tmp_path / "old.html")
    raw = (tmp_path / "old.html").read_text()
    assert "OOD score" not in raw and ">flag<" not in raw
    assert not {"flagged", "heatmap-legend"} & _parse(tmp_path / "old.html").ids  # no heatmaps: no legend
    jsonl = tmp_path / "p.jsonl"
    with open(jsonl, "w") as fh:
        for r in rows:
            probs = None if r["error"] else {c: float(r[f"p:{c}"]) for c in CLASSES}
            fh.write(
                json.dumps(
                    {
                        "path": r["path"],
                        "predicted": r["predicted"] or None,
                        "probabilities": probs,
                        "error": r["error"] or None,
                    }
                )
                + "\n"
            )
    got, classes = read_predictions(jsonl)
    assert classes == CLASSES and len(got) == 8 and got[-1].error
    assert build_report(jsonl, tmp_path / "j.html").thumbnails == 7


def test_cli_with_model_card(run, tmp_path: Path, tiny_arch: str):
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    ckpt = tmp_path / "best.safetensors"
    card = ModelCard(
        arch=tiny_arch,
        task="multiclass",
        class_names=CLASSES,
        metrics={"val_macro_f1": 0.4321},
        dataset={"rows_sha256": "feedbeef"},
    )
    save_checkpoint(ckpt, build_model(tiny_arch, num_classes=3), card)
    html = tmp_path / "r.html"
    res = runner.invoke(
        app, ["report", str(run["preds"]), "--explain", str(run["explain"]), "--model", str(ckpt), "-o", str(html)]
    )
    assert res.exit_code == 0, res.output
    assert str(html) in res.stdout and "1 unreadable" in res.stderr
    text = " ".join(_parse(html).text)
    assert "model-card" in _parse(html).ids and "0.4321" in text and "feedbeef" in text and tiny_arch in text
    assert (
        runner.invoke(app, ["report", str(run["explain"] / "explain.csv"), "-o", str(tmp_path / "x.html")]).exit_code
        == 2
    )


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package 'chromium') is not installed")
def test_chromium_renders_the_page(run, tmp_path: Path):
    html = tmp_path / "r.html"
    build_report(run["preds"], html, explain_dir=run["explain"], caveats=["demo only"])
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--hide-scrollbars", "--window-size=1280,1400", f"--screenshot={shot}", html.as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (1400, 1280)
    assert img.std() > 20  # not a blank page
    caveat = (np.abs(img - np.array([0xFF, 0xF4, 0xD6])).sum(-1) <= 6).mean()  # the caveat box's CSS background
    grey = ((img.max(-1) - img.min(-1) <= 3) & (img.mean(-1) > 30) & (img.mean(-1) < 200)).mean()  # film thumbnails
    assert caveat > 0.005, caveat
    assert grey > 0.01, grey


def test_predict_and_explain_html(tmp_path: Path, tiny_arch: str):
    from cxrtool.config import PreprocessCfg
    from cxrtool.modelfile import ModelCard
    from cxrtool.models import build_model
    from cxrtool.models.checkpoint import save_checkpoint

    ckpt = tmp_path / "best.safetensors"
    save_checkpoint(
        ckpt,
        build_model(tiny_arch, num_classes=3),
        ModelCard(arch=tiny_arch, task="multiclass", class_names=CLASSES, preprocess=PreprocessCfg(input_size=32)),
    )
    scans = tmp_path / "scans"
    scans.mkdir()
    for f in sorted((SAMPLE / "nih" / "images").glob("*.png"))[:3]:
        shutil.copyfile(f, scans / f.name)
    (scans / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    res = runner.invoke(
        app,
        [
            "predict",
            str(scans),
            "-m",
            str(ckpt),
            "--backend",
            "torch",
            "--workers",
            "0",
            "-o",
            str(tmp_path / "p.csv"),
            "--html",
            str(tmp_path / "p.html"),
        ],
    )
    assert res.exit_code == 1, res.output  # the broken file
    page = _parse(tmp_path / "p.html")
    assert page.rows == 1 + 3 and "model-card" in page.ids and "errors" in page.ids and len(page.imgs) == 3
    res = runner.invoke(
        app, ["explain", str(scans), "-m", str(ckpt), "-o", str(tmp_path / "hm"), "--html", str(tmp_path / "e.html")]
    )
    assert res.exit_code == 1, res.output
    page = _parse(tmp_path / "e.html")
    assert page.rows == 1 + 3 and len(page.imgs) == 6 and "broken.png" in " ".join(page.text)  # film + heatmap per row
