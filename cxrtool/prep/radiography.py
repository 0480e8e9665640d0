"""COVID-19 Radiography Database (Chowdhury et al. 2020, Rahman et al. 2021; Kaggle "tawsifurrahman").

Layout of the current release (``COVID-19_Radiography_Dataset/``)::

    COVID/images/COVID-1.png ...           COVID/masks/...            COVID.metadata.xlsx
    Normal/images/Normal-1.png ...         Normal/masks/...           Normal.metadata.xlsx
    Viral Pneumonia/images/...             Viral Pneumonia/masks/...  Viral Pneumonia.metadata.xlsx
    Lung_Opacity/images/...                Lung_Opacity/masks/...     Lung_Opacity.metadata.xlsx

The first release had the images directly in ``COVID-19/``, ``NORMAL/`` and ``Viral Pneumonia/``;
both layouts are read.  Lung masks are ignored (counted in the report).  The metadata
spreadsheets give only file name, format, size and the source web page, no patient id, so they
are not read.  ``Lung_Opacity`` (non-COVID lung opacity from the RSNA challenge) is excluded
unless mapped (``--map Lung_Opacity=lung_opacity``).

The database has no patient ids and the same film reposted from several sources, so the splits
are carved on near-duplicate groups (perceptual hash), stratified by class.  Note its sources:
the 1,341 Kaggle ``Normal`` films and all ``Viral Pneumonia`` films are paediatric (Kermany et
al.), the COVID films adult, a shortcut a model can learn.
"""

from __future__ import annotations

from pathlib import Path

from cxrtool.inputs import iter_input_files
from cxrtool.prep.layouts import (
    ClassMap,
    Item,
    LayoutOptions,
    LayoutReport,
    Progress,
    build_manifest,
    find_root,
    norm_class,
)

NAME = "covid19-radiography"
DEFAULT_MAP: dict[str, str | None] = {
    "COVID": "covid",
    "COVID-19": "covid",  # first release
    "Normal": "normal",
    "Viral Pneumonia": "viral_pneumonia",
    "Lung_Opacity": None,
}
_CLASS_DIRS = {norm_class(k) for k in DEFAULT_MAP}


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and norm_class(d.name) in _CLASS_DIRS)


def list_items(root: Path, report: LayoutReport) -> list[Item]:
    """Every image of every class folder (``images/`` when present, else the folder itself); masks skipped."""
    items: list[Item] = []
    for d in _class_dirs(root):
        images = d / "images" if (d / "images").is_dir() else d
        for p in iter_input_files([images]):
            if "masks" in p.relative_to(d).parts:
                continue
            items.append(Item(p, d.name))
        if (d / "masks").is_dir():
            report.ignored["lung masks"] += sum(1 for _ in iter_input_files([d / "masks"]))
    report.ignored["metadata spreadsheets"] += sum(1 for p in root.glob("*.xlsx"))
    return items


def prep_radiography(
    root: str | Path,
    out: str | Path,
    options: LayoutOptions = LayoutOptions(),
    *,
    salt: str | None,
    progress: Progress | None = None,
) -> LayoutReport:
    """COVID-19 Radiography Database folder -> manifest (covid / normal / viral_pneumonia by default)."""
    root = find_root(
        Path(root),
        lambda d: len(_class_dirs(d)) >= 2,
        "COVID-19 Radiography Database class folders (COVID, Normal, ...)",
    )
    report = LayoutReport(NAME, Path(out), root)
    class_map = ClassMap(DEFAULT_MAP, options.label_map, options.exclude)
    items = list_items(root, report)
    report.notes.append("no patient ids in this database: splits keep near-duplicate groups together")
    return build_manifest(items, Path(out), class_map, options, report, salt=salt, progress=progress)
