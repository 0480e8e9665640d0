"""Calibration films for INT8, and the films held back from them to check the result.

Post-training quantization learns activation ranges from real films; the check that decides
whether the INT8 model may be written must run on *other* films, or it only proves that the
quantizer remembers its own inputs.  :func:`calibration_set` splits a source once, the same way
every time:

* a **manifest** (``.csv``): ``train`` rows calibrate, ``val``/``test`` rows are held out (rows
  without a split go by path hash); labels come from the manifest;
* a **folder**: by a stable hash of each file's path below the folder (a quarter held out);
  labels come from class-named sub-folders (``covid/``, ``normal/`` ...) when they match the model.

The set's fingerprint (sha256 over the relative paths and contents of the calibration films) goes
into the INT8 model's metadata, so a result can be traced to the exact films it was calibrated on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.inputs import iter_input_files
from cxrtool.modelfile import ModelCard, file_sha256
from cxrtool.preprocess import load_input

#: one film in this many is held back from calibration (folders and split-less manifest rows)
HOLDOUT_EVERY = 4
#: NNCF's recommended calibration size is about 300 samples
DEFAULT_CALIB_COUNT = 300
HOLDOUT_SPLITS = ("val", "test")


def _held_out(key: str) -> bool:
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HOLDOUT_EVERY == 0


def fingerprint(files: Sequence[Path], root: Path) -> str:
    """sha256 over ``relative path\\tsha256(content)`` lines, sorted: same films -> same fingerprint."""
    lines = sorted(f"{_relative(f, root)}\t{file_sha256(f)}" for f in files)
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


@dataclass
class CalibrationSet:
    """Calibration films, held-out check films and (when known) the held-out films' labels.

    ``labels`` is one entry per held-out film: a class index (multiclass) or a 0/1 vector
    (multilabel); ``None`` when the source carries no labels the model knows.
    """

    source: Path
    calibration: list[Path]
    holdout: list[Path]
    labels: list[int] | list[list[float]] | None
    skipped: list[str] = field(default_factory=list)  # "path: reason" of films that did not load
    fingerprint: str = ""  # of the calibration films as they were when the set was made

    def describe(self) -> dict[str, object]:
        """What the INT8 model's metadata records about its calibration."""
        return {
            "source": self.source.name,
            "fingerprint": self.fingerprint,
            "calibration_films": len(self.calibration),
            "holdout_films": len(self.holdout),
            "holdout_labelled": self.labels is not None,
        }


def calibration_set(source: str | Path, card: ModelCard, *, limit: int = DEFAULT_CALIB_COUNT) -> CalibrationSet:
    """Split ``source`` (folder or manifest) into calibration and held-out films for ``card``'s model.

    Raises
    ------
    CxrError
        A missing source, or one with no films on either side of the split.
    """
    source = Path(source)
    if source.is_dir():
        result = _from_folder(source, card)
    elif source.is_file() and source.suffix.lower() == ".csv":
        result = _from_manifest(source, card)
    else:
        raise CxrError(f"{source}: --calib takes a folder of films or a manifest .csv")
    if limit and len(result.calibration) > limit:
        step = len(result.calibration) / limit
        result.calibration = [result.calibration[int(i * step)] for i in range(limit)]
    if not result.calibration:
        raise CxrError(f"{source}: no calibration films (every film is in the held-out part)")
    if not result.holdout:
        raise CxrError(f"{source}: no films held back for the INT8 check (need val/test rows or more films)")
    result.fingerprint = fingerprint(result.calibration, source if source.is_dir() else source.parent)
    return result


def _from_folder(folder: Path, card: ModelCard) -> CalibrationSet:
    files = sorted(iter_input_files([folder]))
    calib = [f for f in files if not _held_out(_relative(f, folder))]
    holdout = [f for f in files if _held_out(_relative(f, folder))]
    labels: list[int] | None = None
    if not card.task.multilabel:
        parents = [_relative(f, folder).split("/")[0] for f in holdout]
        if holdout and all(p in card.class_names for p in parents):
            labels = [card.class_names.index(p) for p in parents]
    return CalibrationSet(folder, calib, holdout, labels)


def _from_manifest(path: Path, card: ModelCard) -> CalibrationSet:
    from cxrtool.manifest import check_for_model, read_manifest

    manifest = read_manifest(path)
    # the check calibrate makes (classes, readable films); rows without a label only go unchecked here
    check_for_model(manifest, None, card.class_names, card.task, source=path, labelled=False)
    calib: list[Path] = []
    holdout: list[tuple[Path, dict[str, str]]] = []
    for row in manifest.rows:
        split = row.get("split", "")
        held = split in HOLDOUT_SPLITS or (split != "train" and _held_out(row["path"]))
        if held:
            holdout.append((manifest.resolve(row), row))
        else:
            calib.append(manifest.resolve(row))
    labels: list | None = None
    if manifest.class_names == list(card.class_names) or (not manifest.label_columns and not card.task.multilabel):
        try:
            if card.task.multilabel:
                labels = [manifest.multi_hot(row) for _, row in holdout] if manifest.label_columns else None
            else:
                labels = [manifest.class_index(row, card.class_names) for _, row in holdout]
        except CxrError:
            labels = None
    return CalibrationSet(path, calib, [p for p, _ in holdout], labels)


def load_films(
    files: Sequence[Path], cfg: PreprocessCfg, on_film: Callable[[int], None] | None = None
) -> tuple[np.ndarray, list[int], list[str]]:
    """Preprocessed films (N, C, H, W), the indices of the files that loaded, and "path: reason" of the rest.

    ``on_film(done)`` after each file (loaded or not), for progress.
    """
    arrays: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[str] = []
    for i, f in enumerate(files):
        try:
            arrays.append(load_input(f, cfg))
            kept.append(i)
        except ImageLoadError as exc:
            skipped.append(str(exc))
        if on_film is not None:
            on_film(i + 1)
    shape = (0, cfg.channels, cfg.input_size, cfg.input_size)
    return (np.stack(arrays) if arrays else np.empty(shape, np.float32)), kept, skipped


def iter_calibration_inputs(
    files: Sequence[Path], cfg: PreprocessCfg, skipped: list[str], on_film: Callable[[int], None] | None = None
) -> Iterator[np.ndarray]:
    """One (1, C, H, W) float32 input per loadable film, lazily (NNCF iterates its dataset itself).

    Films that fail to load are appended to ``skipped`` instead of ending the iteration;
    ``on_film(done)`` follows each file, loaded or not, before its input is handed on.
    """
    for i, f in enumerate(files):
        try:
            x = load_input(f, cfg)
        except ImageLoadError as exc:
            skipped.append(str(exc))
            x = None
        if on_film is not None:
            on_film(i + 1)
        if x is not None:
            yield np.ascontiguousarray(x[None], dtype=np.float32)
