"""CLI for prep_dicom (to be filled in by its issue)."""

import typer


def register(group: typer.Typer) -> None:
    """Add this module's commands to the prep group."""
