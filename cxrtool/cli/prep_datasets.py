"""``cxrtool prep nih`` and ``cxrtool prep folder``: datasets -> manifests (thin Typer layer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from cxrtool.cli._console import EXIT_OK, EXIT_SOME_FAILED, err, failed, out, progress, styled, user_errors
from cxrtool.cli._options import default_of
from cxrtool.fsutil import check_writable_output
from cxrtool.prep.nih import NihOptions
from cxrtool.prep.options import FolderOptions

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Manifest CSV to write (atomically).", dir_okay=False)]
SeedOpt = Annotated[int, typer.Option(help="Seed of the split assignment (same seed, same splits).")]
KeepPhiOpt = Annotated[
    bool, typer.Option("--keep-phi", help="Write patient ids as they are instead of salted pseudonyms.")
]
SaltOpt = Annotated[
    Optional[Path],
    typer.Option(
        show_default="$CXRTOOL_SALT, else ~/.config/cxrtool/salt, created on first use",
        help="Salt file for pseudonyms.",
    ),
]


def _salt(keep_phi: bool, salt_file: Path | None) -> str | None:
    from cxrtool.privacy import default_salt_path, load_or_create_salt

    return None if keep_phi else load_or_create_salt(salt_file or default_salt_path())


def _split_table(title: str, counts: dict, classes: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("class")
    splits = [s for s in ("train", "val", "test") if s in counts] + sorted(set(counts) - {"train", "val", "test"})
    for s in splits:
        table.add_column(s, justify="right")
    for c in classes:
        table.add_row(c, *(str(counts[s].get(c, 0)) for s in splits))
    return table


def nih(
    data_entry: Annotated[
        Path, typer.Argument(help="Data_Entry_2017.csv or Data_Entry_2017_v2020.csv.", exists=True, dir_okay=False)
    ],
    out_path: OutOpt,
    images: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--images", help="Folder searched recursively for the image files by name (repeatable; first match wins)."
        ),
    ] = None,
    drop_missing: Annotated[
        bool, typer.Option(help="Leave out rows whose image is not under --images (else kept with status=missing).")
    ] = False,
    train_val_list: Annotated[
        Optional[Path], typer.Option(show_default="next to the CSV", help="Official train_val_list.txt.")
    ] = None,
    test_list: Annotated[
        Optional[Path], typer.Option(show_default="next to the CSV", help="Official test_list.txt.")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Share of train_val carved out, patient by patient, as the val split.")
    ] = default_of(NihOptions, "val_fraction"),
    test_fraction: Annotated[
        float, typer.Option(help="Test share, used only when no official split lists exist.")
    ] = default_of(NihOptions, "test_fraction"),
    seed: SeedOpt = default_of(NihOptions, "seed"),
    views: Annotated[
        Optional[str],
        typer.Option(show_default="all views", help="Keep only these View Positions, e.g. 'PA' or 'PA,AP'."),
    ] = None,
    max_follow_up: Annotated[
        Optional[int],
        typer.Option(
            metavar="N", show_default="all visits", help="Keep only images with Follow-up # <= N (0 = first visits)."
        ),
    ] = None,
    one_per_patient: Annotated[
        bool, typer.Option(help="Keep one image per patient (lowest follow-up left after the other filters).")
    ] = False,
    label_map: Annotated[
        Optional[str],
        typer.Option(
            "--map",
            help="Relabel to TARGET=FINDING[|FINDING],...  e.g. 'viral_pneumonia=Pneumonia,normal=No Finding' "
            "(multiclass output).",
        ),
    ] = None,
    conflict: Annotated[
        str,
        typer.Option(help="--map: images matching several targets are 'drop'ped or take the 'first' target listed."),
    ] = default_of(NihOptions, "conflict"),
    keep_phi: KeepPhiOpt = False,
    salt_file: SaltOpt = None,
) -> None:
    """ChestX-ray14 Data_Entry CSV -> manifest (14 multi-hot findings, or relabelled with --map), official split +
    patient-wise val."""
    from cxrtool.prep.nih import prep_nih

    with user_errors():
        if conflict not in ("drop", "first"):
            raise typer.BadParameter("must be 'drop' or 'first'", param_hint="--conflict")
        check_writable_output(out_path, "file")
        options = NihOptions(
            images=tuple(images or ()),
            drop_missing=drop_missing,
            train_val_list=train_val_list,
            test_list=test_list,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            views=tuple(v for v in (views or "").split(",") if v.strip()),
            max_follow_up=max_follow_up,
            one_per_patient=one_per_patient,
            label_map=label_map,
            conflict=conflict,  # type: ignore[arg-type]
            keep_phi=keep_phi,
        )
        report = prep_nih(data_entry, out_path, options, salt=_salt(keep_phi, salt_file))

    summary = Table(title=f"prep nih: {data_entry.name}", title_justify="left", show_header=False)
    summary.add_row("rows read", f"{report.rows_read:,} (parsed in {report.parse_seconds:.2f} s)")
    for line, why in report.bad_rows[:10]:
        summary.add_row(styled("bad row", "red"), f"line {line}: {why}")
    if len(report.bad_rows) > 10:
        summary.add_row(styled("bad rows", "red"), f"... {len(report.bad_rows) - 10} more")
    for reason, n in report.dropped.items():
        summary.add_row("dropped", f"{n:,}  {reason}")
    if report.images_checked:
        examples = ", ".join(report.missing_examples)
        state = "dropped" if drop_missing else "kept with status=missing"
        line = Text(f"{report.missing:,} listed but not found (")
        line.append(state, style=None if drop_missing else "red")
        line.append(f"){': ' + examples if examples else ''}")
        summary.add_row("missing images", line)
        if report.repeated_names:
            summary.add_row(
                "repeated names", f"{report.repeated_names} files share a name with an earlier one (first used)"
            )
    else:
        summary.add_row("images", "not checked (no --images): paths are bare file names")
    summary.add_row(
        "split",
        "official test list + patient-wise val"
        if report.official_split
        else "patient-wise train/val/test (no official lists)",
    )
    summary.add_row("patients", ", ".join(f"{s} {n:,}" for s, n in report.patients.items()))
    crossing = styled(str(report.patients_crossing), "red" if report.patients_crossing else "green")
    summary.add_row("patients in 2+ splits", crossing)
    summary.add_row("written", f"{report.rows_written:,} rows, {report.task}, in {report.total_seconds:.2f} s")
    err.print(summary)
    names = report.class_names if report.task == "multiclass" else [*report.class_names, "No Finding"]
    err.print(
        _split_table(
            "images per class and split"
            + (" (an image counts once per finding)" if report.task == "multilabel" else ""),
            report.counts,
            names,
        )
    )
    out.print(str(out_path), highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_SOME_FAILED)


def folder(
    root: Annotated[
        Path, typer.Argument(help="Dataset root with one subfolder per class.", exists=True, file_okay=False)
    ],
    out_path: OutOpt,
    val_fraction: Annotated[float, typer.Option(help="Share of images in the val split.")] = default_of(
        FolderOptions, "val_fraction"
    ),
    test_fraction: Annotated[float, typer.Option(help="Share of images in the test split.")] = default_of(
        FolderOptions, "test_fraction"
    ),
    seed: SeedOpt = default_of(FolderOptions, "seed"),
    dup_threshold: Annotated[
        int, typer.Option(help="Max Hamming distance (of 256 pHash bits) for near-duplicates.")
    ] = default_of(FolderOptions, "dup_threshold"),
    dedup: Annotated[
        bool, typer.Option("--dedup/--no-dedup", help="Group near-duplicate images (perceptual hash).")
    ] = default_of(FolderOptions, "dedup"),
    groups: Annotated[
        Optional[Path], typer.Option(help="CSV mapping image paths to patient ids.", exists=True, dir_okay=False)
    ] = None,
    groups_path_col: Annotated[
        str, typer.Option(help="--groups column with the image path (matched on its trailing parts).")
    ] = default_of(FolderOptions, "groups_path_col"),
    groups_id_col: Annotated[
        str, typer.Option(help="--groups column with the patient id (empty = unknown).")
    ] = default_of(FolderOptions, "groups_id_col"),
    keep_phi: KeepPhiOpt = False,
    salt_file: SaltOpt = None,
    workers: Annotated[int, typer.Option(help="Processes for hashing.", min=1)] = default_of(FolderOptions, "workers"),
) -> None:
    """Class-per-subfolder dataset -> manifest with stratified splits that keep patients and near-duplicates
    together."""
    from cxrtool.locks import owned_output
    from cxrtool.prep.folder import prep_folder

    with user_errors():
        check_writable_output(out_path, "file")
    with user_errors(), progress(transient=True) as bar:
        task = bar.add_task("hashing", total=None, info="")
        options = FolderOptions(
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            dedup=dedup,
            dup_threshold=dup_threshold,
            groups=groups,
            groups_path_col=groups_path_col,
            groups_id_col=groups_id_col,
            keep_phi=keep_phi,
            workers=workers,
        )
        with owned_output(out_path):  # one run per manifest; a second one refuses (exit 2)
            report = prep_folder(
                root,
                out_path,
                options,
                salt=_salt(keep_phi, salt_file),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )

    for path, why in report.failed:
        err.print(failed(path, why), soft_wrap=True)
    if dedup:
        dups = Table(
            title=f"{len(report.dup_groups)} near-duplicate groups (threshold {dup_threshold}/256 bits)",
            title_justify="left",
        )
        for col in ("group", "max dist", "images"):
            dups.add_column(col)
        for g in report.dup_groups:
            members = Text(", ".join(g.members))
            if g.cross_class:
                members.append(" (different classes!)", style="red")
            dups.add_row(g.name, str(g.max_distance), members)
        err.print(dups)
    summary = Table(title=f"prep folder: {root}", title_justify="left", show_header=False)
    summary.add_row("images", f"{report.images} hashed in {report.hash_seconds:.1f} s, {len(report.failed)} failed")
    if report.outside_classes:
        summary.add_row("ignored", f"{report.outside_classes} files directly in ROOT (not in a class folder)")
    if groups:
        summary.add_row(
            "patient ids",
            f"{report.group_matches} images listed in --groups, {report.patients_known} distinct patients",
        )
        if report.group_ambiguous:
            summary.add_row(
                styled("ambiguous", "yellow"),
                f"{len(report.group_ambiguous)} images match entries with different ids: "
                f"{', '.join(report.group_ambiguous[:3])}",
            )
    leak = styled(str(report.leaking_groups), "red" if report.leaking_groups else "green")
    summary.add_row("groups in 2+ splits", leak)
    err.print(summary)
    err.print(_split_table("images per class and split", report.counts, report.classes))
    out.print(str(out_path), highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_SOME_FAILED)


def register(group: typer.Typer) -> None:
    """Add ``nih`` and ``folder`` to the prep group."""
    group.command("nih")(nih)
    group.command("folder")(folder)
