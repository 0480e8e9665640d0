"""``cxrtool prep radiography | covidx | kermany``: public COVID-19 / pneumonia downloads -> manifests (thin layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cxrtool.cli._console import EXIT_OK, EXIT_SOME_FAILED, err, failed, out, progress, styled, user_errors

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Manifest CSV to write (atomically).", dir_okay=False)]


def _map_opt(example: str) -> Any:
    """``--map``, with an example valid for the dataset at hand."""
    return Annotated[
        Optional[str],
        typer.Option("--map", help=f"Rename or include dataset classes: DATASET_CLASS=LABEL,... (e.g. '{example}')."),
    ]


def _exclude_opt(example: str) -> Any:
    return Annotated[
        Optional[list[str]], typer.Option("--exclude", help=f"Leave out a dataset class (repeatable; e.g. {example}).")
    ]


#: Datasets with official splits: val is carved from the train part, patient by patient.
ValOpt = Annotated[
    float,
    typer.Option(
        help="Share of the official train part carved out, patient by patient, as val "
        "(when the download has no val split)."
    ),
]
TestOpt = Annotated[float, typer.Option(help="Test share for images without an official split.")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the split assignment.")]
DedupOpt = Annotated[
    bool,
    typer.Option(
        "--dedup/--no-dedup", help="Hash every image: unreadable files are named, near-duplicates kept in one split."
    ),
]
KeepPhiOpt = Annotated[
    bool, typer.Option("--keep-phi", help="Write patient ids as they are instead of salted pseudonyms.")
]
SaltOpt = Annotated[
    Optional[Path],
    typer.Option(show_default="$CXRTOOL_SALT, else ~/.config/cxrtool/salt", help="Salt file for pseudonyms."),
]
WorkersOpt = Annotated[int, typer.Option(help="Processes for hashing.", min=1)]


def _options(label_map, exclude, val_fraction, test_fraction, seed, dedup, keep_phi, workers):
    from cxrtool.prep.layouts import LayoutOptions

    return LayoutOptions(
        label_map=label_map,
        exclude=tuple(exclude or ()),
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        dedup=dedup,
        keep_phi=keep_phi,
        workers=workers,
    )


def _salt(keep_phi: bool, salt_file: Path | None) -> str | None:
    from cxrtool.privacy import default_salt_path, load_or_create_salt

    return None if keep_phi else load_or_create_salt(salt_file or default_salt_path())


def _run(fn, root: Path, out_path: Path, options, salt: str | None, **kwargs) -> None:
    with user_errors(), progress(transient=True) as bar:
        task = bar.add_task("hashing", total=None, info="")
        report = fn(
            root,
            out_path,
            options,
            salt=salt,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            **kwargs,
        )
    _render(report)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_SOME_FAILED)


def _render(report) -> None:
    for path, why in report.failed:
        err.print(failed(path, why), soft_wrap=True)
    for name in report.missing[:10]:
        err.print(failed(name, "listed, not on disk"), soft_wrap=True)
    if len(report.missing) > 10:
        err.print(f"... {len(report.missing) - 10} more listed images missing")
    summary = Table(title=f"prep {report.dataset}: {report.root}", title_justify="left", show_header=False)
    summary.add_row(
        "images",
        f"{report.images:,} kept in {report.seconds:.1f} s, "
        f"{len(report.failed)} unreadable, {len(report.missing)} missing",
    )
    for reason, n in report.dropped.items():
        summary.add_row("dropped", f"{n:,}  {reason}")
    for what, n in report.ignored.items():
        summary.add_row("ignored", f"{n:,}  {what}")
    summary.add_row("official splits", ", ".join(report.official_splits) or "none (all carved)")
    summary.add_row("patients", f"{report.patients:,}" if report.patients else "no ids in this dataset")
    if report.dup_groups:
        summary.add_row("near-duplicate groups", f"{report.dup_groups:,}")
    for label, n in (
        ("patients in 2+ splits", report.patients_crossing),
        ("duplicate groups in 2+ splits", report.dups_crossing),
    ):
        summary.add_row(label, styled("0", "green") if not n else styled(f"{n} (in the official split)", "red"))
    for note in report.notes:
        summary.add_row("note", note)
    err.print(summary)
    table = Table(title="images per class and split", title_justify="left")
    table.add_column("class")
    splits = [s for s in ("train", "val", "test") if s in report.counts]
    for s in splits:
        table.add_column(s, justify="right")
    for c in report.classes:
        table.add_row(c, *(str(report.counts[s].get(c, 0)) for s in splits))
    err.print(table)
    out.print(str(report.out), soft_wrap=True)


RootArg = Annotated[
    Path, typer.Argument(help="The unpacked download (or the folder above it).", exists=True, file_okay=False)
]


def radiography(
    root: RootArg,
    out_path: OutOpt,
    label_map: _map_opt("Lung_Opacity=lung_opacity") = None,
    exclude: _exclude_opt("COVID") = None,
    val_fraction: Annotated[
        float, typer.Option(help="Share of images in the val split (no patient ids: near-duplicates stay together).")
    ] = 0.15,
    test_fraction: TestOpt = 0.15,
    seed: SeedOpt = 0,
    dedup: DedupOpt = True,
    keep_phi: KeepPhiOpt = False,
    salt_file: SaltOpt = None,
    workers: WorkersOpt = 1,
) -> None:
    """COVID-19 Radiography Database (COVID / Normal / Viral Pneumonia / Lung_Opacity, images/ + masks/) -> manifest.

    Labels covid, normal, viral_pneumonia; Lung_Opacity only with --map Lung_Opacity=NAME; masks ignored.
    No patient ids exist, so splits keep near-duplicate groups together.
    """
    from cxrtool.prep.radiography import prep_radiography

    with user_errors():
        options = _options(label_map, exclude, val_fraction, test_fraction, seed, dedup, keep_phi, workers)
    _run(prep_radiography, root, out_path, options, _salt(keep_phi, salt_file))


def covidx(
    root: RootArg,
    out_path: OutOpt,
    train_file: Annotated[
        Optional[Path],
        typer.Option(show_default="ROOT/train*.txt", help="Train split file.", exists=True, dir_okay=False),
    ] = None,
    val_file: Annotated[
        Optional[Path],
        typer.Option(show_default="ROOT/val*.txt if any", help="Val split file.", exists=True, dir_okay=False),
    ] = None,
    test_file: Annotated[
        Optional[Path],
        typer.Option(show_default="ROOT/test*.txt", help="Test split file.", exists=True, dir_okay=False),
    ] = None,
    label_map: _map_opt("pneumonia=other_pneumonia") = None,
    exclude: _exclude_opt("pneumonia") = None,
    val_fraction: ValOpt = 0.1,
    seed: SeedOpt = 0,
    dedup: DedupOpt = True,
    keep_phi: KeepPhiOpt = False,
    salt_file: SaltOpt = None,
    workers: WorkersOpt = 1,
) -> None:
    """COVIDx CXR (split files of 'patient_id filename class source' lines + image folders) -> manifest.

    Official splits kept (checked patient-wise); a patient-wise val is carved from train when no val file exists.
    """
    from cxrtool.prep.covidx import prep_covidx

    files = {s: p for s, p in (("train", train_file), ("val", val_file), ("test", test_file)) if p is not None}
    with user_errors():
        options = _options(label_map, exclude, val_fraction, 0.0, seed, dedup, keep_phi, workers)
    _run(prep_covidx, root, out_path, options, _salt(keep_phi, salt_file), split_files=files)


def kermany(
    root: RootArg,
    out_path: OutOpt,
    label_map: _map_opt("bacteria=bacterial") = None,
    exclude: _exclude_opt("bacteria") = None,
    val_fraction: ValOpt = 0.1,
    seed: SeedOpt = 0,
    dedup: DedupOpt = True,
    keep_phi: KeepPhiOpt = False,
    salt_file: SaltOpt = None,
    workers: WorkersOpt = 1,
) -> None:
    """Kermany paediatric pneumonia (chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}) -> manifest.

    normal, viral_pneumonia (the _virus_ files) and bacterial_pneumonia (--exclude bacteria to drop it).
    """
    from cxrtool.prep.kermany import prep_kermany

    with user_errors():
        options = _options(label_map, exclude, val_fraction, 0.0, seed, dedup, keep_phi, workers)
    _run(prep_kermany, root, out_path, options, _salt(keep_phi, salt_file))


def register(group: typer.Typer) -> None:
    """Add ``radiography``, ``covidx`` and ``kermany`` to the prep group."""
    group.command("radiography")(radiography)
    group.command("covidx")(covidx)
    group.command("kermany")(kermany)
