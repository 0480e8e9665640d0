"""What a cxrtool model file carries and how to read it: the one contract between export and infer.

Three kinds of file describe the same model (torchvision's ``Weights`` idea: the file says what it is):

* a **checkpoint** (``.safetensors``): weights plus the JSON :class:`ModelCard` in the header;
* an **ONNX export**: the same card in ``metadata_props`` (:data:`CARD_KEY`) plus the sha256 of the
  checkpoint it came from, so a stale export is never used silently;
* a **TensorRT engine**: a JSON :class:`EngineSidecar` beside it with the card, the build's
  TensorRT version and GPU, and the source hashes.

``cxrtool.export`` writes through this module and ``cxrtool.infer`` reads through it; neither
package imports the other.  Nothing here imports torch, onnx runtimes or TensorRT at import time.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxrtool import __version__
from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError, one_line
from cxrtool.modelfile.validate import PROFILE_RULES, check_card, check_rules, loads_bounded
from cxrtool.task import Task, get_task

CHECKPOINT_FORMAT = "cxrtool-checkpoint/1"
SIDECAR_FORMAT = "cxrtool-tensorrt-engine/1"

#: exports of ``runs/x/best.safetensors`` live in ``runs/x/engines/``
ENGINES_DIR = "engines"
ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIX = ".engine"
#: NNCF INT8 exports: an OpenVINO IR pair (``.int8.xml`` + ``.int8.bin``) and, for TensorRT, a Q/DQ ONNX
INT8_IR_SUFFIX = ".int8.xml"
IR_SUFFIX = ".xml"  # any OpenVINO IR (cxrtool writes them only for INT8)
INT8_ONNX_SUFFIX = ".int8.onnx"

#: ONNX graph input/output names every backend relies on
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

#: ONNX output with the pooled features the OOD score is computed on (:mod:`cxrtool.trust`)
FEATURES_NAME = "features"
#: safetensors keys of the OOD statistics in a checkpoint (never loaded as weights)
TRUST_PREFIX = "trust."

#: ONNX ``metadata_props`` keys (all strings)
TRUST_TENSORS_KEY = "cxrtool.trust_tensors"  # base64 of a safetensors blob of the TRUST_PREFIX tensors
CARD_KEY = "cxrtool.card"
SOURCE_SHA_KEY = "cxrtool.source_sha256"
SOURCE_NAME_KEY = "cxrtool.source_name"
VERSION_KEY = "cxrtool.version"
CREATED_KEY = "cxrtool.created"
#: JSON: precision, calibration fingerprint, the held-out check's numbers (INT8 exports only)
INT8_KEY = "cxrtool.int8"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the card


@dataclass
class ModelCard:
    """What a model file says about its model: enough to rebuild it, preprocess like training and decide.

    ``task`` may be given as a name (``"multiclass"``); it is stored as a :class:`~cxrtool.task.Task`.
    """

    arch: str
    task: Task
    class_names: list[str]
    preprocess: PreprocessCfg = field(default_factory=PreprocessCfg)
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    #: temperature scaling (:mod:`cxrtool.trust.temperature`); empty: not calibrated (T = 1)
    calibration: dict[str, Any] = field(default_factory=dict)
    #: out-of-distribution score parameters (:mod:`cxrtool.trust.ood`); tensors under :data:`TRUST_PREFIX`
    ood: dict[str, Any] = field(default_factory=dict)
    cxrtool_version: str = __version__
    created: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        if not isinstance(self.task, Task):
            self.task = get_task(self.task)
        self.class_names = list(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["preprocess"] = self.preprocess.to_dict()
        data["task"] = self.task.to_dict()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> ModelCard:
        """Validate field by field: a damaged card raises ``ValueError`` naming the field."""
        if not isinstance(data, dict):
            raise ValueError("the card is not a JSON object")
        for key in ("arch", "task", "class_names"):
            if key not in data:
                raise ValueError(f"field {key!r} is missing")
        names = data["class_names"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError("field 'class_names' must be a non-empty list of names")
        if len(set(names)) != len(names):
            raise ValueError("field 'class_names' repeats a name")
        if not isinstance(data["arch"], str):
            raise ValueError("field 'arch' must be a string")
        kinds = {
            "preprocess": dict,
            "config": dict,
            "metrics": dict,
            "dataset": dict,
            "lineage": list,
            "calibration": dict,
            "ood": dict,
        }
        for key, kind in kinds.items():
            if not isinstance(data.get(key) or kind(), kind):
                raise ValueError(f"field {key!r} must be a JSON {kind.__name__.replace('dict', 'object')}")
        check_card(data)
        kwargs = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        try:
            kwargs["task"] = get_task(data["task"])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"field 'task': {exc}") from None
        try:
            kwargs["preprocess"] = PreprocessCfg.from_dict(data.get("preprocess") or {})
        except (ValueError, TypeError) as exc:
            raise ValueError(f"field 'preprocess': {exc}") from None
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        return cls.from_dict(loads_bounded(text))


def parse_card(text: str, *, source: str | Path, where: str) -> ModelCard:
    """:meth:`ModelCard.from_json` with a one-line :class:`CxrError` naming the file and the field."""
    try:
        return ModelCard.from_json(text)
    except (ValueError, TypeError) as exc:
        raise CxrError(f"{source}: damaged cxrtool model card in {where}: {one_line(exc)}") from None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_id(path: str | Path) -> str:
    """``<file stem>@<sha256 prefix>``: names the exact model file that made a result."""
    path = Path(path)
    return f"{path.stem}@{file_sha256(path)[:12]}"


# ---------------------------------------------------------------- checkpoints


def checkpoint_metadata(card: ModelCard) -> dict[str, str]:
    """The safetensors header strings of a checkpoint."""
    return {"format": CHECKPOINT_FORMAT, "card": card.to_json()}


def _safetensors_header(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    if path.is_dir():
        raise CxrError(f"{path}: is a folder, not a checkpoint file")
    try:
        with safe_open(str(path), framework="numpy") as fh:
            return fh.metadata() or {}
    except FileNotFoundError:
        raise CxrError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # safetensors raises its own SafetensorError for anything malformed
        raise CxrError(f"{path}: not a safetensors checkpoint ({one_line(exc)})") from None


def read_card(path: str | Path) -> ModelCard:
    """The card of a checkpoint (fast: reads the header, not the weights)."""
    card = card_if_checkpoint(path)
    if card is None:
        raise CxrError(f"{path}: safetensors file without a cxrtool model card")
    return card


def card_if_checkpoint(path: str | Path) -> ModelCard | None:
    """The card of a cxrtool checkpoint, ``None`` for a plain safetensors state dict; a damaged card is an error."""
    path = Path(path)
    return checkpoint_card(_safetensors_header(path), path)


def checkpoint_card(meta: dict[str, str], path: str | Path) -> ModelCard | None:
    """:func:`card_if_checkpoint` for header strings already read (:mod:`cxrtool.modelfile.loaded`)."""
    if meta.get("format") != CHECKPOINT_FORMAT:
        return None
    if "card" not in meta:
        raise CxrError(f"{path}: cxrtool checkpoint without its model card")
    return parse_card(meta["card"], source=path, where="the safetensors header")


# ---------------------------------------------------------------- exports and where they live


def default_onnx_path(checkpoint: str | Path) -> Path:
    """``<checkpoint folder>/engines/<stem>.onnx``: where ``auto`` looks for an export."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent / ENGINES_DIR / f"{checkpoint.stem}{ONNX_SUFFIX}"


def default_int8_path(model: str | Path, suffix: str = INT8_IR_SUFFIX) -> Path:
    """``<folder>/engines/<stem>.int8.xml`` for a checkpoint, ``<folder>/<stem>.int8.xml`` for an ONNX file."""
    model = Path(model)
    onnx_path = model if model.suffix.lower() == ONNX_SUFFIX else default_onnx_path(model)
    return onnx_path.with_name(onnx_path.stem + suffix)


def read_ir_metadata(path: str | Path) -> dict[str, str]:
    """The ``cxrtool.*`` entries of an OpenVINO IR's ``rt_info`` (parsed from the XML; no OpenVINO import).

    :func:`cxrtool.modelfile.write.set_ir_metadata` writes them with ``Model.set_rt_info(value, ["cxrtool", key])``,
    which OpenVINO serialises as ``<rt_info><cxrtool><key value="..."/></cxrtool></rt_info>``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CxrError(f"{path}: OpenVINO model not found") from None
    except OSError as exc:
        raise CxrError(f"{path}: not a readable OpenVINO IR ({one_line(exc)})") from None
    return parse_ir_metadata(data, path)


def parse_ir_metadata(data: bytes, path: str | Path) -> dict[str, str]:
    """:func:`read_ir_metadata` of an IR's XML already read (some 16 MB, most of it the trust blob: parse it once)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise CxrError(f"{path}: not a readable OpenVINO IR ({one_line(exc)})") from None
    node = root.find("rt_info/cxrtool")
    return {} if node is None else {f"cxrtool.{c.tag}": c.get("value", "") for c in node}


def read_ir_card(path: str | Path, metadata: dict[str, str] | None = None) -> ModelCard:
    """The model card embedded in an INT8 OpenVINO IR written by ``cxrtool export --int8``."""
    meta = read_ir_metadata(path) if metadata is None else metadata
    if CARD_KEY not in meta:
        raise CxrError(f"{path}: OpenVINO IR without a cxrtool model card; make it with `cxrtool export --int8`")
    return parse_card(meta[CARD_KEY], source=path, where="the OpenVINO rt_info")


def read_export_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of an export: an OpenVINO IR's ``rt_info`` (``.xml``) or an ONNX file's ``metadata_props``."""
    return read_ir_metadata(path) if Path(path).suffix.lower() == IR_SUFFIX else read_onnx_metadata(path)


def int8_info(path: str | Path) -> dict[str, Any]:
    """The INT8 record (precision, calibration fingerprint, check numbers) of an INT8 export, ``{}`` if none."""
    meta = read_export_metadata(path)
    if INT8_KEY not in meta:
        return {}
    try:
        info = loads_bounded(meta[INT8_KEY])
    except ValueError as exc:
        raise CxrError(f"{path}: damaged INT8 record in its metadata: {one_line(exc)}") from None
    return info if isinstance(info, dict) else {}


def default_engine_path(model: str | Path) -> Path:
    """``<folder>/engines/<stem>.engine`` for a checkpoint, ``<folder>/<stem>.engine`` for an ONNX file."""
    model = Path(model)
    onnx_path = model if model.suffix.lower() == ONNX_SUFFIX else default_onnx_path(model)
    return onnx_path.with_suffix(ENGINE_SUFFIX)


def onnx_metadata(card: ModelCard, checkpoint: str | Path) -> dict[str, str]:
    """What an ONNX export records in ``metadata_props``."""
    checkpoint = Path(checkpoint)
    return {
        CARD_KEY: card.to_json(),
        SOURCE_SHA_KEY: file_sha256(checkpoint),
        SOURCE_NAME_KEY: checkpoint.name,
        VERSION_KEY: __version__,
        CREATED_KEY: _now(),
    }


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file as a dict."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CxrError(f"{path}: ONNX file not found") from None
    except OSError as exc:
        raise CxrError(f"{path}: not a readable ONNX file ({one_line(exc)})") from None
    return parse_onnx_metadata(data, path)


def parse_onnx_metadata(data: bytes, path: str | Path) -> dict[str, str]:
    """:func:`read_onnx_metadata` of an ONNX file's bytes already read.

    Read with protobuf's schema-less view of the ``ModelProto`` (``metadata_props`` is field 14, each a
    ``StringStringEntryProto`` of key 1 and value 2, as onnx.proto defines them), not with ``onnx``:
    importing ``onnx`` costs 1.5 s of CPU (its ml_dtypes), more than predict needs for its first films.
    Later entries win, as in ``onnx.load``.
    """
    from google.protobuf import empty_pb2
    from google.protobuf.message import DecodeError
    from google.protobuf.unknown_fields import UnknownFieldSet

    def fields(blob: bytes) -> UnknownFieldSet:
        message = empty_pb2.Empty()
        message.ParseFromString(blob)
        return UnknownFieldSet(message)

    try:
        meta = {}
        for field in fields(data):
            if field.field_number == _ONNX_METADATA_PROPS:
                entry = {f.field_number: f.data for f in fields(field.data)}
                meta[entry.get(1, b"").decode("utf-8")] = entry.get(2, b"").decode("utf-8")
    except (DecodeError, UnicodeDecodeError, AttributeError):  # AttributeError: a field of the wrong wire type
        raise CxrError(f"{path}: not a readable ONNX file (damaged, or not an ONNX model)") from None
    return meta


#: ``ModelProto.metadata_props`` (onnx.proto)
_ONNX_METADATA_PROPS = 14


def read_onnx_card(path: str | Path, metadata: dict[str, str] | None = None) -> ModelCard:
    """The model card embedded in an ONNX export (classes, task, preprocessing, provenance)."""
    meta = read_onnx_metadata(path) if metadata is None else metadata
    if CARD_KEY not in meta:
        raise CxrError(f"{path}: ONNX file without a cxrtool model card; export it with `cxrtool export --onnx`")
    return parse_card(meta[CARD_KEY], source=path, where="the ONNX metadata")


def exported_from(onnx_path: str | Path, source_sha256: str) -> bool:
    """True when ``onnx_path`` exists and records ``source_sha256`` as its source (not a stale export)."""
    if not Path(onnx_path).is_file():
        return False
    try:
        return read_export_metadata(onnx_path).get(SOURCE_SHA_KEY) == source_sha256
    except CxrError:
        return False


# ---------------------------------------------------------------- TensorRT engine sidecars


@dataclass(frozen=True)
class BatchProfile:
    """An engine's optimisation profile: it accepts batches ``min``..``max``, tuned for ``opt``."""

    min: int = 1
    opt: int = 16
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise CxrError(
                f"batch sizes must satisfy 1 <= min <= opt <= max, got min={self.min} opt={self.opt} max={self.max}"
            )


@dataclass
class EngineSidecar:
    """What ``<engine>.json`` records next to a serialised engine."""

    card: ModelCard
    precision: str
    profile: BatchProfile
    input_name: str
    output_name: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    engine_sha256: str
    source_onnx: str
    source_onnx_sha256: str
    source_checkpoint_sha256: str
    calibration: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    cxrtool_version: str = __version__
    created: str = field(default_factory=_now)
    format: str = SIDECAR_FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        data["card"] = self.card.to_dict()
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineSidecar:
        data = loads_bounded(text)
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            found = data.get("format") if isinstance(data, dict) else None
            raise ValueError(f"format {found!r}, expected {SIDECAR_FORMAT!r}")
        data["card"] = ModelCard.from_dict(data["card"])
        if not isinstance(data.get("profile"), dict):
            raise ValueError("field 'profile' must be a JSON object")
        check_rules(data["profile"], PROFILE_RULES, "profile.")
        data["profile"] = BatchProfile(**{k: data["profile"][k] for k in ("min", "opt", "max")})
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def write_sidecar(engine: str | Path, sidecar: EngineSidecar) -> Path:
    from cxrtool.fsutil import atomic_write_text

    path = sidecar_path(engine)
    atomic_write_text(path, sidecar.to_json() + "\n")
    return path


def read_sidecar(engine: str | Path) -> EngineSidecar:
    """The engine's sidecar; a missing or damaged one means the engine cannot be trusted."""
    path = sidecar_path(engine)
    rebuild = "rebuild the engine with `cxrtool export --trt`"
    try:
        return EngineSidecar.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CxrError(f"{engine}: its sidecar {path.name} is missing; {rebuild}") from None
    except (ValueError, KeyError, TypeError, CxrError) as exc:
        raise CxrError(f"{path}: unreadable engine sidecar ({one_line(exc)}); {rebuild}") from None


def check_compatible(
    sidecar: EngineSidecar,
    engine: str | Path,
    *,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    engine_sha256: str | None = None,
) -> None:
    """Refuse an engine built for another TensorRT version or GPU model, or not the one the sidecar describes.

    TensorRT engines are not portable: kernels are chosen for one GPU model and the plan format is
    tied to the exact TensorRT release.  Raises :class:`CxrError` saying how to rebuild.
    """
    rebuild = f"rebuild the engine on this machine: cxrtool export --trt {sidecar.source_onnx}"
    if engine_sha256 is not None and engine_sha256 != sidecar.engine_sha256:
        raise CxrError(f"{engine}: the engine file does not match its sidecar (replaced or damaged); {rebuild}")
    built = f"TensorRT {sidecar.tensorrt_version} on {sidecar.gpu_name} (compute {sidecar.compute_capability})"
    here = f"TensorRT {tensorrt_version} on {gpu_name} (compute {compute_capability})"
    if (sidecar.tensorrt_version, sidecar.gpu_name, sidecar.compute_capability) != (
        tensorrt_version,
        gpu_name,
        compute_capability,
    ):
        raise CxrError(f"{engine}: built for {built}, this machine has {here}; {rebuild}")


# ---------------------------------------------------------------- a model and its exports


def read_any_card(path: str | Path) -> ModelCard:
    """The card of a checkpoint, an ONNX export or a TensorRT engine (by suffix)."""
    suffix = Path(path).suffix.lower()
    if suffix == ONNX_SUFFIX:
        return read_onnx_card(path)
    if suffix == ENGINE_SUFFIX:
        return read_sidecar(path).card
    if suffix == IR_SUFFIX:
        return read_ir_card(path)
    return read_card(path)
