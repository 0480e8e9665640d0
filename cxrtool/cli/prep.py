"""``cxrtool prep``: dataset preparation commands (DICOM conversion, NIH relabelling, class folders)."""

import typer

from cxrtool.cli import prep_datasets, prep_dicom, prep_public


def register(app: typer.Typer) -> None:
    """Add the ``prep`` group to the root app."""
    group = typer.Typer(
        help="Prepare data: DICOM -> PNG, ChestX-ray14 labels, class folders -> manifests.", no_args_is_help=True
    )
    prep_dicom.register(group)
    prep_datasets.register(group)
    prep_public.register(group)
    app.add_typer(group, name="prep")
