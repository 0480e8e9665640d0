"""What ``prep folder`` is asked to do, apart from the hashing code: ``--help`` reads these defaults cheaply."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: max Hamming distance (of 256 bits) for "near-duplicate"
DEFAULT_THRESHOLD = 16


@dataclass(frozen=True)
class FolderOptions:
    """Split shares, near-duplicate detection and the optional patient-id mapping of ``prep folder``."""

    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    dedup: bool = True
    dup_threshold: int = DEFAULT_THRESHOLD
    groups: Path | None = None
    groups_path_col: str = "path"
    groups_id_col: str = "patient_id"
    keep_phi: bool = False
    workers: int = 1
