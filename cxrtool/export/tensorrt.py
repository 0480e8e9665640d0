"""ONNX -> TensorRT engine (TensorRT 10 Python API), with a JSON sidecar that guards against misuse.

TensorRT comes only from NVIDIA's index and needs a GPU, so this module is split in two:

* plain Python, tested everywhere: option validation (:class:`BatchProfile`,
  :func:`engine_precision`), calibration batches (:class:`CalibrationBatches`, preprocessed with the
  model's own :class:`~cxrtool.config.PreprocessCfg`), the sidecar (:class:`EngineSidecar`) and the
  "built for another GPU / TensorRT" check (:func:`check_compatible`);
* a thin layer that imports ``tensorrt``/``pycuda`` lazily: :func:`build_engine` and the runtime in
  :mod:`cxrtool.infer.trt_backend`.

An engine is only valid for the TensorRT version and GPU model it was built on; the sidecar records
both (and the source hashes), so loading it elsewhere fails with "rebuild the engine" instead of
a deserialisation crash or silently slow kernels.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrtool import __version__
from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.export.onnx import ParityError, ParityReport, compare_logits
from cxrtool.images import iter_input_files, load_image
from cxrtool.models.checkpoint import ModelCard, file_sha256
from cxrtool.preprocess import to_model_input

SIDECAR_FORMAT = "cxrtool-tensorrt-engine/1"
ENGINE_SUFFIX = ".engine"
MIN_TENSORRT_MAJOR = 10
#: Max abs logit difference allowed against ONNX Runtime fp32.  fp32 engines use TF32 tensor cores
#: by default (10-bit mantissa), fp16 has 11 bits, INT8 calibration error is larger still; these
#: bounds are estimates that were NOT verified on a GPU here (see docs/export.md).
DEFAULT_TOLERANCE = {"fp32": 1e-2, "fp16": 1e-1, "int8": 0.5}
DEFAULT_CALIB_COUNT = 512


def default_engine_path(model: str | Path) -> Path:
    """``<folder>/engines/<stem>.engine`` for a checkpoint, ``<folder>/<stem>.engine`` for an ONNX file."""
    from cxrtool.export.onnx import default_onnx_path

    model = Path(model)
    onnx_path = model if model.suffix.lower() == ".onnx" else default_onnx_path(model)
    return onnx_path.with_suffix(ENGINE_SUFFIX)


def sidecar_path(engine: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile's batch sizes: the engine accepts ``min``..``max``, tuned for ``opt``."""

    min: int = 1
    opt: int = 16
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise CxrError(f"batch sizes must satisfy 1 <= min <= opt <= max, got min={self.min} opt={self.opt} max={self.max}")


def engine_precision(*, fp16: bool, int8: bool, calib: str | Path | None) -> str:
    """Validate the precision flags and name the result (``fp32``, ``fp16``, ``int8``, ``int8+fp16``)."""
    if int8 and calib is None:
        raise CxrError("--int8 needs --calib DIR: a folder of representative films to calibrate on")
    if calib is not None and not int8:
        raise CxrError("--calib is only used with --int8")
    if calib is not None and not Path(calib).is_dir():
        raise CxrError(f"{calib}: calibration folder not found")
    parts = (["int8"] if int8 else []) + (["fp16"] if fp16 else [])
    return "+".join(parts) or "fp32"


def default_tolerance(precision: str) -> float:
    """The loosest part of the precision decides (``int8+fp16`` -> int8's bound)."""
    return max(DEFAULT_TOLERANCE[p] for p in precision.split("+"))


class CalibrationBatches:
    """Fixed-size float32 batches of films from ``files``, preprocessed exactly like inference.

    TensorRT calibrates at one batch shape, so the last incomplete batch is dropped; files that do
    not load are skipped and listed in :attr:`skipped` ("path: reason"), :attr:`used` counts the
    films fed.  Lazy: one batch in memory.
    """

    def __init__(self, files: Sequence[Path], cfg: PreprocessCfg, batch_size: int, limit: int = DEFAULT_CALIB_COUNT):
        if batch_size < 1:
            raise CxrError(f"calibration batch size must be >= 1, not {batch_size}")
        self.files = list(files)[:limit] if limit else list(files)
        if len(self.files) < batch_size:
            raise CxrError(f"calibration needs at least {batch_size} images (one batch), found {len(self.files)} files")
        self.cfg = cfg
        self.batch_size = batch_size
        self.skipped: list[str] = []
        self.used = 0

    @classmethod
    def from_folder(cls, folder: str | Path, cfg: PreprocessCfg, batch_size: int, limit: int = DEFAULT_CALIB_COUNT) -> CalibrationBatches:
        return cls(list(iter_input_files([folder])), cfg, batch_size, limit)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, self.cfg.channels, self.cfg.input_size, self.cfg.input_size)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def __iter__(self) -> Iterator[np.ndarray]:
        self.skipped, self.used = [], 0
        pending: list[np.ndarray] = []
        for path in self.files:
            try:
                pending.append(to_model_input(load_image(path, window=self.cfg.window), self.cfg))
            except ImageLoadError as exc:
                self.skipped.append(str(exc))
                continue
            if len(pending) == self.batch_size:
                self.used += len(pending)
                yield np.ascontiguousarray(np.stack(pending), dtype=np.float32)
                pending = []


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
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    format: str = SIDECAR_FORMAT

    def to_json(self) -> str:
        data = asdict(self)
        data["card"] = json.loads(self.card.to_json())
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EngineSidecar:
        data = json.loads(text)
        if data.get("format") != SIDECAR_FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {SIDECAR_FORMAT!r}")
        data["card"] = ModelCard.from_json(json.dumps(data["card"]))
        data["profile"] = BatchProfile(**data["profile"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def write_sidecar(engine: str | Path, sidecar: EngineSidecar) -> Path:
    from cxrtool.fsutil import atomic_write_text

    path = sidecar_path(engine)
    atomic_write_text(path, sidecar.to_json() + "\n")
    return path


def read_sidecar(engine: str | Path) -> EngineSidecar:
    """The engine's sidecar; a missing or damaged one means the engine cannot be trusted."""
    path = sidecar_path(engine)
    try:
        return EngineSidecar.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CxrError(f"{engine}: its sidecar {path.name} is missing; rebuild the engine with `cxrtool export --trt`") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CxrError(f"{path}: unreadable engine sidecar ({exc}); rebuild the engine with `cxrtool export --trt`") from None


def engine_matches_source(engine: str | Path, source_sha256: str) -> bool:
    """True when the engine's sidecar says it was built from the file with this hash (checkpoint or ONNX)."""
    try:
        sidecar = read_sidecar(engine)
    except CxrError:
        return False
    return source_sha256 in (sidecar.source_checkpoint_sha256, sidecar.source_onnx_sha256)


def check_compatible(
    sidecar: EngineSidecar, engine: str | Path, *, tensorrt_version: str, gpu_name: str, compute_capability: str, engine_sha256: str | None = None
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
    if (sidecar.tensorrt_version, sidecar.gpu_name, sidecar.compute_capability) != (tensorrt_version, gpu_name, compute_capability):
        raise CxrError(f"{engine}: built for {built}, this machine has {here}; {rebuild}")


def cuda_index(device: str) -> int:
    """``cuda`` -> 0, ``cuda:1`` -> 1; anything else is a usage error."""
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise CxrError(f"TensorRT needs a CUDA device (cuda or cuda:N), not {device!r}")
    return int(index or 0)


def import_tensorrt() -> Any:
    """``tensorrt`` (10 or newer) or a one-line reason why not."""
    try:
        import tensorrt as trt
    except ImportError:
        raise CxrError("TensorRT is not installed (pip install 'cxrtool[trt]' from NVIDIA's index; needs a CUDA GPU)") from None
    major = int(trt.__version__.split(".")[0])
    if major < MIN_TENSORRT_MAJOR:
        raise CxrError(f"TensorRT {trt.__version__} is too old; cxrtool needs TensorRT {MIN_TENSORRT_MAJOR} or newer")
    return trt


@dataclass
class EngineBuild:
    path: Path
    sidecar: EngineSidecar
    parity: ParityReport
    seconds: float


def build_engine(
    onnx_path: str | Path,
    out: str | Path | None = None,
    *,
    fp16: bool = False,
    int8: bool = False,
    calib: str | Path | None = None,
    calib_count: int = DEFAULT_CALIB_COUNT,
    profile: BatchProfile = BatchProfile(),
    device: str = "cuda",
    workspace_gib: float = 4.0,
    check_images: Sequence[str | Path] = (),
    check_count: int = 16,
    tolerance: float | None = None,
) -> EngineBuild:
    """Build a TensorRT engine from an exported ONNX file, write it with its sidecar, check it against ONNX Runtime.

    Parameters
    ----------
    onnx_path:
        A file written by :func:`cxrtool.export.onnx.export_onnx` (its card supplies the input shape).
    out:
        Engine path; default :func:`default_engine_path`.
    fp16, int8, calib, calib_count:
        Precision flags; INT8 calibrates with the entropy calibrator on up to ``calib_count`` films
        from the ``calib`` folder.
    profile:
        Batch sizes of the optimisation profile.
    device:
        ``cuda`` or ``cuda:N``.
    workspace_gib:
        Builder workspace memory limit.
    check_images, check_count, tolerance:
        Parity inputs (default: the calibration folder, else seeded noise) and the largest allowed
        max-abs logit difference (default by precision, :data:`DEFAULT_TOLERANCE`).

    Returns
    -------
    EngineBuild
        Engine path, sidecar, parity report and build time.

    Raises
    ------
    CxrError
        Invalid options, TensorRT missing, parse/build failure or parity above the tolerance.
    """
    from cxrtool.export.onnx import SOURCE_SHA_KEY, check_batch, ort_session, read_onnx_card, read_onnx_metadata, run_ort_in_two_batches
    from cxrtool.fsutil import atomic_path
    from cxrtool.infer.trt_backend import TrtRunner, current_gpu

    start = time.perf_counter()
    precision = engine_precision(fp16=fp16, int8=int8, calib=calib)
    tolerance = default_tolerance(precision) if tolerance is None else tolerance
    index = cuda_index(device)
    onnx_path = Path(onnx_path)
    meta = read_onnx_metadata(onnx_path)
    card = read_onnx_card(onnx_path, meta)
    cfg = card.preprocess
    out = Path(out) if out is not None else default_engine_path(onnx_path)
    batches = CalibrationBatches.from_folder(calib, cfg, profile.opt, calib_count) if calib is not None else None
    check_sources = list(check_images) or ([calib] if calib is not None else [])
    batch, kind, skipped = check_batch(cfg, check_sources, check_count)

    trt = import_tensorrt()
    gpu_name, capability = current_gpu(index)
    serialized, input_name, output_name = _build_serialized(trt, onnx_path, cfg, precision, profile, batches, workspace_gib)

    with atomic_path(out) as tmp:
        tmp.write_bytes(serialized)
        sidecar = EngineSidecar(
            card=card,
            precision=precision,
            profile=profile,
            input_name=input_name,
            output_name=output_name,
            tensorrt_version=trt.__version__,
            gpu_name=gpu_name,
            compute_capability=capability,
            engine_sha256=file_sha256(tmp),
            source_onnx=onnx_path.name,
            source_onnx_sha256=file_sha256(onnx_path),
            source_checkpoint_sha256=meta.get(SOURCE_SHA_KEY, ""),
            calibration={"images": batches.used, "skipped": len(batches.skipped), "folder": str(calib)} if batches else {},
        )
        runner = TrtRunner(serialized, index)
        got = np.concatenate([runner.infer(batch[i : i + profile.max]) for i in range(0, len(batch), profile.max)])
        reference = run_ort_in_two_batches(ort_session(onnx_path), batch)
        report = compare_logits(reference, got, tolerance=tolerance, inputs=kind)
        report.skipped = skipped
        if not report.ok:
            raise ParityError(
                f"{out}: TensorRT {precision} engine failed the parity check against ONNX Runtime: max abs logit "
                f"difference {report.max_abs_diff:.3g} > tolerance {tolerance:g} (top-1 agreement "
                f"{report.top1_agreement:.1%}) on {report.n_inputs} {kind} inputs; nothing written"
            )
        sidecar.parity = {"max_abs_diff": report.max_abs_diff, "top1_agreement": report.top1_agreement, "inputs": f"{report.n_inputs} {kind}"}
        write_sidecar(out, sidecar)
    return EngineBuild(out, sidecar, report, time.perf_counter() - start)


def _build_serialized(
    trt: Any, onnx_path: Path, cfg: PreprocessCfg, precision: str, profile: BatchProfile, batches: CalibrationBatches | None, workspace_gib: float
) -> tuple[bytes, str, str]:
    """The TensorRT calls proper: parse, profile, flags, calibrator, ``build_serialized_network``."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CxrError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")
    input_name, output_name = network.get_input(0).name, network.get_output(0).name

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    sample = (cfg.channels, cfg.input_size, cfg.input_size)
    shapes = builder.create_optimization_profile()
    shapes.set_shape(input_name, (profile.min, *sample), (profile.opt, *sample), (profile.max, *sample))
    config.add_optimization_profile(shapes)
    if "fp16" in precision:
        config.set_flag(trt.BuilderFlag.FP16)
    if "int8" in precision:
        assert batches is not None  # engine_precision guarantees a calibration folder
        config.set_flag(trt.BuilderFlag.INT8)
        calib_shapes = builder.create_optimization_profile()
        calib_shapes.set_shape(input_name, batches.shape, batches.shape, batches.shape)
        config.set_calibration_profile(calib_shapes)
        config.int8_calibrator = _entropy_calibrator(trt, batches)

    serialized = builder.build_serialized_network(network, config)
    if batches is not None and batches.used == 0:
        raise CxrError(f"calibration: fewer than {batches.batch_size} loadable images ({len(batches.skipped)} failed to load)")
    if serialized is None:
        raise CxrError(f"{onnx_path}: TensorRT could not build a {precision} engine (see the TensorRT log above)")
    return bytes(serialized), input_name, output_name


def _entropy_calibrator(trt: Any, batches: CalibrationBatches) -> Any:
    """``IInt8EntropyCalibrator2`` feeding :class:`CalibrationBatches` through one device buffer."""
    import pycuda.driver as cuda

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(batches)
            self.device_buffer = cuda.mem_alloc(batches.nbytes)

        def get_batch_size(self) -> int:
            return batches.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            cuda.memcpy_htod(self.device_buffer, batch)
            return [int(self.device_buffer)]

        def read_calibration_cache(self) -> bytes | None:
            return None  # always calibrate from the films given

        def write_calibration_cache(self, cache: bytes) -> None:
            return None

    return EntropyCalibrator()
