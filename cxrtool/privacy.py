"""Pseudonymisation of patient identifiers (no PHI in manifests, logs or PNGs unless asked).

A salted SHA-256 keeps the same patient under the same pseudonym across runs (so splits and
resumed runs stay consistent) while the salt, kept out of the outputs, stops dictionary reversal
of short numeric IDs.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from cxrtool.fsutil import atomic_write_text

SALT_ENV = "CXRTOOL_SALT"
PREFIX = "anon-"


def pseudonymise(value: str, salt: str, *, length: int = 16) -> str:
    """Stable pseudonym for ``value``; empty stays empty (unknown is not a patient)."""
    if not value:
        return ""
    digest = hashlib.sha256(f"{salt}\x00{value}".encode()).hexdigest()
    return PREFIX + digest[:length]


def load_or_create_salt(path: str | Path) -> str:
    """Salt from ``$CXRTOOL_SALT``, else from ``path`` (created with a random salt on first use).

    Keep the salt file private and out of any shared dataset: with it, pseudonyms can be checked
    against guessed IDs.
    """
    env = os.environ.get(SALT_ENV)
    if env:
        return env
    path = Path(path)
    if path.is_file():
        return path.read_text(encoding="utf-8").strip()
    salt = secrets.token_hex(16)
    atomic_write_text(path, salt + "\n")
    os.chmod(path, 0o600)
    return salt


def default_salt_path() -> Path:
    base = Path(os.environ.get("XDG_CONFIG_HOME", Path.home() / ".config"))
    return base / "cxrtool" / "salt"
