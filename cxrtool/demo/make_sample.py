"""Maintainer tool: rebuild ``sample/`` and ``ATTRIBUTION.md`` from the project's fixture data.

Only licence-clean files go in: ChestX-ray14 thumbnails (NIH Clinical Center, no restrictions on
use, cite Wang et al. 2017) and NEMA / pydicom test DICOMs.  The 3-class covid3 fixtures have
unknown licences and are never read here.  Run: ``python -m cxrtool.demo.make_sample ../shared/data``.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import sys
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "sample"
N_NORMAL = 200  # every abnormal thumbnail ships, plus this many "No Finding" ones
DICOMS = {  # file in shared/data/dicom -> (source, licence)
    "chest/CR-MONO1-10-chest.dcm": (
        "NEMA / David Clunie public sample, as shipped in fo-dicom's test data "
        "(fo-dicom/fo-dicom@1b92c598, Tests/FO-DICOM.Tests/Test Data/CR-MONO1-10-chest)",
        "public DICOM conformance sample, no licence restriction stated; fo-dicom repository MS-PL",
    ),
    "chest/RG1_J2KI.dcm": (
        "NEMA DICOM WG04 compression test set (RG1_J2KI), as packaged in "
        "pydicom-data 1.0.0 (data_store/data/RG1_J2KI.dcm)",
        "NEMA WG04 public conformance sample; pydicom-data package MIT",
    ),
    "derived/CR-MONO1-10-chest_J2KR_derived.dcm": (
        "CR-MONO1-10-chest.dcm above, re-encoded JPEG 2000 lossless (pixel-identical) for the cxrtool fixtures",
        "as its source",
    ),
}
NIH_SOURCE = (
    "NIH ChestX-ray14 (https://nihcc.app.box.com/v/ChestXray-NIHCC), "
    "64x64 thumbnail from dinbe0527/kcr2019d1@{commit} {path}, "
    "stored here as 8-bit grey PNG (same pixels: R=G=B)"
)
NIH_LICENCE = (
    "NIH Clinical Center: no restrictions on use; cite Wang et al., CVPR 2017; acknowledge the NIH Clinical Center"
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(shared: Path) -> None:
    nih = shared / "nih"
    rows = [
        r
        for r in csv.DictReader(open(nih / "images_manifest.csv", encoding="utf-8"))
        if r["file"].startswith("nih1000_64/")
    ]
    normal = [r for r in rows if r["finding_labels"] == "No Finding"]
    chosen = [r for r in rows if r["finding_labels"] != "No Finding"] + normal[:: max(1, len(normal) // N_NORMAL)][
        :N_NORMAL
    ]
    chosen.sort(key=lambda r: r["image_index"])
    if SAMPLE.exists():
        shutil.rmtree(SAMPLE)
    (SAMPLE / "nih" / "images").mkdir(parents=True)
    (SAMPLE / "dicom").mkdir()
    attribution: list[tuple[str, str, str, str]] = []
    for r in chosen:
        dst = SAMPLE / "nih" / "images" / r["image_index"]
        with Image.open(nih / r["file"]) as im:
            im.convert("L").save(dst, optimize=True)
        attribution.append(
            (
                dst.relative_to(HERE).as_posix(),
                NIH_SOURCE.format(commit=r["commit"][:12], path=r["source_path"]),
                NIH_LICENCE,
                sha256(dst),
            )
        )
    names = {r["image_index"] for r in chosen}
    with open(nih / "Data_Entry_2017_v2020.csv", encoding="utf-8") as fh:
        header, *lines = fh.read().splitlines()
    (SAMPLE / "nih" / "Data_Entry_2017_v2020.csv").write_text(
        "\n".join([header, *(ln for ln in lines if ln.split(",", 1)[0] in names)]) + "\n"
    )
    for split_list in ("train_val_list.txt", "test_list.txt"):
        kept = [n for n in (nih / split_list).read_text().split() if n in names]
        (SAMPLE / "nih" / split_list).write_text("\n".join(kept) + "\n")
    for meta in ("Data_Entry_2017_v2020.csv", "train_val_list.txt", "test_list.txt"):
        attribution.append(
            (
                f"sample/nih/{meta}",
                f"NIH ChestX-ray14 {meta}, only the rows of the images above",
                NIH_LICENCE,
                sha256(SAMPLE / "nih" / meta),
            )
        )
    for rel, (source, licence) in DICOMS.items():
        dst = SAMPLE / "dicom" / Path(rel).name
        shutil.copyfile(shared / "dicom" / rel, dst)
        attribution.append((dst.relative_to(HERE).as_posix(), source, licence, sha256(dst)))
    total = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    lines_md = [
        "# Demo sample: sources and licences",
        "",
        f"`sample/` holds {len(chosen)} ChestX-ray14 thumbnails (64x64), "
        "their Data_Entry rows and official split lists,",
        f"and {len(DICOMS)} public DICOM test files; {total / 1e6:.2f} MB in all. "
        "Every file is listed below with its source and licence.",
        "No file of unknown licence is included (in particular none of the COVID-19 fixture films).",
        "",
        "Please cite when you reuse the ChestX-ray14 images: "
        "Xiaosong Wang, Yifan Peng, Le Lu, Zhiyong Lu, Mohammadhadi Bagheri,",
        "Ronald Summers, *ChestX-ray8: "
        "Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and",
        "Localization of Common Thorax Diseases*, IEEE CVPR 2017, pp. 3462-3471. Data provider: NIH Clinical Center.",
        "",
        "The thumbnails are far too small for any clinical reading; "
        "the demo uses them to show the workflow, not to make a diagnostic model.",
        "",
        "| file | source | licence | sha256 |",
        "|---|---|---|---|",
        *(f"| {f} | {s} | {lic} | `{h}` |" for f, s, lic, h in attribution),
        "",
    ]
    (HERE / "ATTRIBUTION.md").write_text("\n".join(lines_md), encoding="utf-8")
    print(f"{len(attribution)} files, {total / 1e6:.2f} MB -> {SAMPLE}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data"))
