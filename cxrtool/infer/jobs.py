"""Which files a predict run takes: a lazy walk of the inputs, then the shard and resume filters.

Nothing here lists a whole folder up front: paths are yielded as the walk finds them, so the
pipeline behind stays bounded on a 100,000-file folder.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from cxrtool.errors import CxrError
from cxrtool.inputs import iter_input_files

_SHARD = re.compile(r"([0-9]+)/([0-9]+)")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)`` (1-based, like test sharding tools): exactly digits, a slash, digits."""
    match = _SHARD.fullmatch(text)
    if not match:
        raise CxrError(f"--shard wants i/n such as 1/4, not {text!r}")
    i, n = int(match[1]), int(match[2])
    if not 1 <= i <= n:
        raise CxrError(f"--shard wants 1 <= i <= n, not {text!r}")
    return i, n


def shard_of(key: str, n: int) -> int:
    """Stable 1-based shard of a key (blake2b, not ``hash()``, which changes per process)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n + 1


@runtime_checkable
class JobSource(Protocol):
    """Inputs that are not files (DICOMweb instances, :class:`cxrtool.dicomweb.source.DicomwebSource`).

    ``iter_jobs`` lazily yields ``(name, shard key)``: the name is what the decode function reads and
    the row records (and ``--resume`` matches), the key what ``--shard`` hashes (a SOP Instance UID).
    """

    def iter_jobs(self) -> Iterator[tuple[str, str]]: ...


def iter_jobs(inputs: Iterable[str | Path | JobSource]) -> Iterator[tuple[Path | str, str]]:
    """Lazily yield ``(file, shard key)``.

    The key is the path relative to the folder argument (or the bare name of a file argument), so
    machines that mount the same folder at different places still agree on who predicts what.
    A :class:`JobSource` gives its own names and keys.
    """
    for arg in inputs:
        if isinstance(arg, JobSource):
            yield from arg.iter_jobs()
            continue
        arg = Path(arg)
        for path in iter_input_files([arg]):
            key = path.relative_to(arg).as_posix() if arg.is_dir() else path.name
            yield path, key


def select_paths(
    inputs: Iterable[str | Path | JobSource],
    *,
    shard: tuple[int, int] | None = None,
    done: Collection[str] = frozenset(),
    skipped: Counter | None = None,
) -> Iterator[str]:
    """The paths this run predicts: in ``shard`` (``(i, n)``) and not already ``done`` (resume).

    ``skipped`` counts what was left out, under ``"shard"`` and ``"resume"``.
    """
    skipped = Counter() if skipped is None else skipped
    for path, key in iter_jobs(inputs):
        if shard and shard_of(key, shard[1]) != shard[0]:
            skipped["shard"] += 1
        elif str(path) in done:
            skipped["resume"] += 1
        else:
            yield str(path)
