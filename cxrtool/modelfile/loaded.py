"""A model file opened once per run: bytes read, sha256 taken, card and metadata parsed (torchvision's ``Weights``).

:func:`open_model` is the one place a run reads a model file.  The :class:`LoadedModel` it returns
is handed to everything that needs the model: backends are built from its bytes
(:func:`cxrtool.infer.loading.load_backend`), predict names its rows with :attr:`LoadedModel.model_id`,
trust statistics come from its bytes or metadata (:func:`cxrtool.trust.load_trust`), and the DICOM
results, the HTML report and explain read its card.  A checkpoint's exports (``engines/``) are opened
the same way, once each, when ``auto`` or an explicit backend needs them (:meth:`LoadedModel.exports`).

Nothing here imports torch or a runtime; ONNX metadata is parsed with ``onnx`` (protobuf only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cxrtool.errors import CxrError, one_line
from cxrtool.modelfile import (
    CARD_KEY,
    ENGINE_SUFFIX,
    INT8_KEY,
    IR_SUFFIX,
    ONNX_SUFFIX,
    SOURCE_SHA_KEY,
    EngineSidecar,
    ModelCard,
    checkpoint_card,
    default_engine_path,
    default_int8_path,
    default_onnx_path,
    parse_card,
    parse_ir_metadata,
    parse_onnx_metadata,
    read_sidecar,
)

CHECKPOINT_SUFFIX = ".safetensors"
#: TensorRT serialised engines (``cxrtool export --trt`` writes ``.engine``; ``.plan`` is TensorRT's usual name)
ENGINE_SUFFIXES = (ENGINE_SUFFIX, ".plan")


def read_model_bytes(path: Path) -> bytes:
    """The bytes of a model file: every read of a model file in a run goes through here (tests count it)."""
    if path.is_dir():
        raise CxrError(f"{path}: is a folder, not a model file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CxrError(f"{path}: model file not found") from None
    except OSError as exc:
        raise CxrError(f"{path}: cannot read the model file ({one_line(exc)})") from None


@dataclass(eq=False)
class LoadedModel:
    """One model file, read and parsed once.

    Attributes
    ----------
    path:
        The file (as given; an export found by :meth:`exports` has its own path).
    data:
        Its bytes: safetensors checkpoint, ONNX protobuf, OpenVINO IR XML or serialised TensorRT engine.
    sha256:
        Hex digest of ``data``: the model's identity (:attr:`model_id`, export freshness, ``auto``'s
        speed measurements).
    card:
        The model card (from the safetensors header, ONNX ``metadata_props``, IR ``rt_info`` or engine sidecar).
    metadata:
        The file's string metadata: safetensors header strings, ONNX ``metadata_props`` or the IR's
        ``cxrtool.*`` ``rt_info`` entries; empty for an engine.
    sidecar:
        A TensorRT engine's sidecar (None for other files).
    """

    path: Path
    data: bytes = field(repr=False)
    sha256: str
    card: ModelCard
    metadata: dict[str, str] = field(default_factory=dict, repr=False)
    sidecar: EngineSidecar | None = field(default=None, repr=False)
    #: the files opened together with this one (its family: a checkpoint and its exports), by resolved path
    _family: dict[Path, LoadedModel] = field(default_factory=dict, repr=False)

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower()

    @property
    def is_checkpoint(self) -> bool:
        """A ``.safetensors`` checkpoint: the only kind torch (and LRP heatmaps) can run."""
        return self.suffix == CHECKPOINT_SUFFIX

    @property
    def is_engine(self) -> bool:
        return self.suffix in ENGINE_SUFFIXES

    @property
    def model_id(self) -> str:
        """``<file stem>@<sha256 prefix>``: names the exact model file that made a result."""
        return f"{self.path.stem}@{self.sha256[:12]}"

    @property
    def int8(self) -> dict[str, Any]:
        """The INT8 record (precision, calibration fingerprint, check numbers) of an INT8 export, ``{}`` if none."""
        text = self.metadata.get(INT8_KEY)
        if not text:
            return {}
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CxrError(f"{self.path}: damaged INT8 record ({exc.msg})") from None
        if not isinstance(record, dict):
            raise CxrError(f"{self.path}: damaged INT8 record (not a JSON object)")
        return record

    @cached_property
    def weights(self) -> bytes:
        """An OpenVINO IR's ``.bin`` (read on first use: only the IR that runs needs it)."""
        if self.suffix != IR_SUFFIX:
            raise CxrError(f"{self.path}: only an OpenVINO IR has a separate weights file")
        return read_model_bytes(self.path.with_suffix(".bin"))

    def made_from(self, source_sha256: str) -> bool:
        """True when this export records ``source_sha256`` as the file it was made from (not stale)."""
        if self.sidecar is not None:
            return source_sha256 in (self.sidecar.source_checkpoint_sha256, self.sidecar.source_onnx_sha256)
        return self.metadata.get(SOURCE_SHA_KEY) == source_sha256

    def related(self, path: Path) -> LoadedModel:
        """Another file of this model's family, opened once for all of them."""
        key = path.resolve()
        if key not in self._family:
            self._family[key] = open_model(path, family=self._family)
        return self._family[key]

    @cached_property
    def _exports(self) -> list[tuple[Path, LoadedModel | None]]:
        if self.is_checkpoint:
            paths = [default_onnx_path(self.path)]
        elif self.suffix == ONNX_SUFFIX:
            paths = []
        else:
            return []
        paths += [default_int8_path(self.path), default_engine_path(self.path)]
        found: list[tuple[Path, LoadedModel | None]] = []
        for path in paths:
            if not path.is_file():
                continue
            try:
                export = self.related(path)
            except CxrError:  # a damaged export counts as stale: never used, and named when asked for
                found.append((path, None))
                continue
            found.append((path, export if export.made_from(self.sha256) else None))
        return found

    def exports(self) -> list[tuple[Path, LoadedModel | None]]:
        """The files ``cxrtool export`` derived from this one, each opened once; None for a stale or damaged one.

        A checkpoint's exports live in ``<folder>/engines/<stem>.onnx`` / ``.int8.xml`` / ``.engine``; an
        ONNX file's sit next to it.  An export is current only when the source hash recorded inside it
        is this file's, so a stale export is never picked up silently.
        """
        return list(self._exports)

    def family(self) -> list[LoadedModel]:
        """This file, then its current exports: every file a backend could run for this model."""
        return [self, *(m for _, m in self.exports() if m is not None)]

    def engine_source(self) -> LoadedModel | None:
        """A TensorRT engine's source ONNX file when it is still the one the engine was built from."""
        if self.sidecar is None:
            return None
        onnx_path = Path(self.sidecar.source_onnx)
        if not onnx_path.is_absolute():
            onnx_path = self.path.parent / onnx_path
        if not onnx_path.is_file():
            return None
        source = self.related(onnx_path)
        return source if source.sha256 == self.sidecar.source_onnx_sha256 else None


def open_model(path: str | Path, *, family: dict[Path, LoadedModel] | None = None) -> LoadedModel:
    """Read a checkpoint, ONNX export, INT8 OpenVINO IR or TensorRT engine once, and parse its card.

    Raises
    ------
    CxrError
        The file is missing or unreadable, or has no (or a damaged) cxrtool model card; one line
        naming the file.
    """
    path = Path(path)
    data = read_model_bytes(path)
    digest = hashlib.sha256(data).hexdigest()
    suffix = path.suffix.lower()
    sidecar = None
    if suffix == ONNX_SUFFIX:
        metadata = parse_onnx_metadata(data, path)
        card = _export_card(metadata, path, "the ONNX metadata", "export it with `cxrtool export --onnx`")
    elif suffix == IR_SUFFIX:
        metadata = parse_ir_metadata(data, path)
        card = _export_card(metadata, path, "the OpenVINO rt_info", "make it with `cxrtool export --int8`")
    elif suffix in ENGINE_SUFFIXES:
        metadata = {}
        sidecar = read_sidecar(path)
        card = sidecar.card
    else:
        metadata = safetensors_metadata(data, path)
        found = checkpoint_card(metadata, path)
        if found is None:
            raise CxrError(f"{path}: safetensors file without a cxrtool model card")
        card = found
    family = {} if family is None else family
    model = LoadedModel(path, data, digest, card, metadata, sidecar, family)
    family.setdefault(path.resolve(), model)
    return model


def _export_card(metadata: dict[str, str], path: Path, where: str, how: str) -> ModelCard:
    if CARD_KEY not in metadata:
        kind = "ONNX file" if path.suffix.lower() == ONNX_SUFFIX else "OpenVINO IR"
        raise CxrError(f"{path}: {kind} without a cxrtool model card; {how}")
    return parse_card(metadata[CARD_KEY], source=path, where=where)


def safetensors_metadata(data: bytes, path: str | Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file's bytes (its format: u64 header length, JSON header).

    The tensors themselves are checked by safetensors when they are loaded.
    """
    bad = f"{path}: not a safetensors checkpoint"
    if len(data) < 8:
        raise CxrError(f"{bad} (only {len(data)} bytes)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise CxrError(f"{bad} (header of {size} bytes in a {len(data)}-byte file)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CxrError(f"{bad} (header is not JSON: {one_line(exc)})") from None
    if not isinstance(header, dict):
        raise CxrError(f"{bad} (header is not a JSON object)")
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CxrError(f"{bad} (its __metadata__ is not a map of strings)")
    return meta
