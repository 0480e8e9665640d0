"""Small helpers shared by the dataset preparers (paths and pseudonyms in manifests)."""

from __future__ import annotations

import os
from pathlib import Path

from cxrtool.privacy import pseudonymise


def manifest_path(image: Path, manifest_dir: Path) -> str:
    """Path as written in a manifest: relative when the image lies under the manifest's folder.

    Relative paths let a dataset move together with its manifest; for images elsewhere (a shared
    read-only data folder, say) a chain of ``../`` would break as soon as either moves, so those
    are written absolute. :meth:`cxrtool.manifest.Manifest.resolve` reads both.
    """
    image = image.resolve()
    try:
        return image.relative_to(manifest_dir.resolve()).as_posix()
    except ValueError:
        return os.fspath(image)


class GroupNamer:
    """Patient id -> manifest ``group``: pseudonymised (cached) unless PHI is explicitly kept."""

    def __init__(self, salt: str | None, *, keep_phi: bool):
        if not keep_phi and not salt:
            raise ValueError("a salt is needed to pseudonymise patient ids (or keep_phi=True)")
        self._salt = salt or ""
        self._keep_phi = keep_phi
        self._cache: dict[str, str] = {}

    def __call__(self, patient_id: str) -> str:
        if self._keep_phi or not patient_id:
            return patient_id
        name = self._cache.get(patient_id)
        if name is None:
            name = self._cache[patient_id] = pseudonymise(patient_id, self._salt)
        return name
