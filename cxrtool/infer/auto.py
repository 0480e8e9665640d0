"""``--backend auto``: run what is fastest *on this machine*, and say why.

The candidates are every (backend, file, options) that can run a model here: torch on the
checkpoint, ONNX Runtime and OpenVINO f32/bf16 on its ONNX export, OpenVINO on its INT8 IR,
TensorRT on its engine.  The choice, in order of evidence:

1. **a measurement**: ``cxrtool bench --save`` stores model-only images/s per variant for this
   machine (:func:`machine_key`: CPU model, instruction-set flags that matter, cores, runtime
   versions) and model file (sha256) in :func:`cache_dir`.  When every candidate was measured,
   the fastest wins;
2. **CPU capabilities** otherwise (``/proc/cpuinfo`` flags, never the vendor name): an INT8
   export when the CPU has integer SIMD dot products (AVX2 or better: VNNI/AMX make it faster
   still), else OpenVINO bf16 when OpenVINO lists BF16 (AMX/AVX512-BF16), else ONNX Runtime
   (faster than OpenVINO f32 on the AVX2 development machines, issue 13), else torch;
3. on CUDA: TensorRT when its engine exists and a CUDA device is usable, else torch.

A candidate that fails to load falls through to the next, and the reason travels with the result.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrtool.cpu import cpu_flags, cpu_name
from cxrtool.errors import CxrError

if TYPE_CHECKING:
    from cxrtool.modelfile.loaded import LoadedModel

CACHE_ENV = "CXRTOOL_CACHE_DIR"
#: flags that change which kernels a runtime can use (the rest of /proc/cpuinfo does not matter here)
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
INT8_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")
#: the batch size whose model-only speed decides (predict's default)
DECIDING_BATCH = 16


@dataclass
class Candidate:
    """One way to run the model: ``label`` is the bench variant name (``openvino-int8``, ``onnxruntime`` ...)."""

    label: str
    backend: str
    model: LoadedModel
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.model.path


@dataclass
class Choice:
    candidate: Candidate
    reason: str


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "-"


def machine_key() -> str:
    """Stable id of "this machine" for speed purposes: CPU model, speed flags, cores, runtime versions."""
    flags = sorted(cpu_flags() & set(SPEED_FLAGS))
    parts = [
        cpu_name(),
        ",".join(flags),
        str(os.cpu_count()),
        *(f"{m}={_version(m)}" for m in ("onnxruntime", "openvino", "torch")),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cxrtool" / "speed"


def _cache_file() -> Path:
    return cache_dir() / f"{machine_key()}.json"


def _file_key(path: Path) -> str:
    from cxrtool.modelfile import file_sha256

    return file_sha256(path)


def load_measurements() -> dict[str, dict[str, float]]:
    """``{"<file sha256>|<label>": {"model_ips": ..., "batch_size": ...}}`` measured on this machine."""
    try:
        data = json.loads(_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("measurements", {}) if isinstance(data, dict) else {}


def save_measurements(rows: list[tuple[Path, str, int, float]]) -> Path:
    """Store (model file, variant label, batch size, model-only images/s) for this machine; returns the cache file."""
    from cxrtool.fsutil import atomic_write_text

    stored = load_measurements()
    for path, label, batch_size, ips in rows:
        key = f"{_file_key(Path(path))}|{label}"
        previous = stored.get(key)
        if previous is None or batch_size == DECIDING_BATCH or previous.get("batch_size") != DECIDING_BATCH:
            stored[key] = {"model_ips": float(ips), "batch_size": int(batch_size), "file": Path(path).name}
    target = _cache_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        target, json.dumps({"machine": cpu_name(), "measurements": stored}, indent=2, sort_keys=True) + "\n"
    )
    return target


def candidates(model: LoadedModel, device: str) -> list[Candidate]:
    """Every way this model (or its current exports, each opened once) can run on ``device`` here."""
    from cxrtool.infer.backends import BACKENDS, backend_class

    files = model.family()
    found: list[Candidate] = []
    for name in BACKENDS:
        try:
            cls = backend_class(name)
        except ImportError:
            continue
        for f in files:
            if f.suffix not in cls.suffixes or not cls.is_available(device):
                continue
            found += _variants(name, f)
    return found


def _variants(backend: str, model: LoadedModel) -> list[Candidate]:
    from cxrtool.modelfile import IR_SUFFIX

    if backend != "openvino":
        return [Candidate(backend, backend, model)]
    if model.suffix == IR_SUFFIX:
        return [Candidate("openvino-int8", backend, model)]
    variants = [Candidate("openvino-f32", backend, model, {"precision": "f32"})]
    if _openvino_bf16():
        variants.append(Candidate("openvino-bf16", backend, model, {"precision": "bf16"}))
    return variants


def _openvino_bf16() -> bool:
    import openvino as ov

    from cxrtool.infer.openvino_backend import cpu_supports_bf16

    return cpu_supports_bf16(ov.Core())


def rank(found: list[Candidate], device: str, measurements: dict[str, dict[str, float]] | None = None) -> list[Choice]:
    """``found`` best first, each with the reason it is where it is."""
    if not found:
        return []
    if device.startswith("cuda"):
        return _rank_cuda(found)
    measurements = load_measurements() if measurements is None else measurements
    measured = {id(c): measurements.get(f"{c.model.sha256}|{c.label}") for c in found}
    if all(measured.values()):
        order = sorted(found, key=lambda c: -measured[id(c)]["model_ips"])
        best = measured[id(order[0])]
        others = ", ".join(f"{c.label} {measured[id(c)]['model_ips']:.1f}" for c in order[1:])
        head = (
            f"fastest measured here (cxrtool bench --save): {order[0].label} {best['model_ips']:.1f} img/s "
            f"at batch {best['batch_size']}" + (f" vs {others}" if others else "")
        )
        return [
            Choice(c, head if i == 0 else f"measured {measured[id(c)]['model_ips']:.1f} img/s")
            for i, c in enumerate(order)
        ]
    missing = ", ".join(c.label for c in found if not measured[id(c)])
    return _rank_cpu(found, cpu_flags(), f"no bench measurement here for {missing}")


def _rank_cpu(found: list[Candidate], flags: set[str], why_not_measured: str) -> list[Choice]:
    by_label = {c.label: c for c in found}
    order: list[tuple[str, str]] = []
    int8_flags = [f for f in INT8_FLAGS if f in flags]
    if int8_flags:
        order.append(("openvino-int8", f"INT8 export and the CPU has integer SIMD ({', '.join(int8_flags)})"))
    if flags & {"avx512_bf16", "amx_bf16"}:
        order.append(("openvino-bf16", f"the CPU has bf16 ({', '.join(sorted(flags & {'avx512_bf16', 'amx_bf16'}))})"))
    order += [
        ("onnxruntime", "fp32: ONNX Runtime (faster than OpenVINO f32 on AVX2 CPUs, as measured)"),
        ("openvino-f32", "fp32 OpenVINO"),
        ("torch", "torch eager"),
        ("openvino-int8", "INT8 export (this CPU lacks AVX2)"),
    ]
    ranked: list[Choice] = []
    for label, why in order:
        if label in by_label and all(r.candidate.label != label for r in ranked):
            ranked.append(Choice(by_label[label], f"{why}; {why_not_measured}" if not ranked else why))
    ranked += [Choice(c, "other") for c in found if all(r.candidate is not c for r in ranked)]
    return ranked


def _rank_cuda(found: list[Candidate]) -> list[Choice]:
    order = ["tensorrt", "torch", "onnxruntime"]
    ranked = sorted(found, key=lambda c: order.index(c.label) if c.label in order else len(order))
    return [
        Choice(c, "TensorRT engine on a usable CUDA device" if c.label == "tensorrt" else f"{c.label} on CUDA")
        for c in ranked
    ]


def load_auto(model: LoadedModel, device: str, **options: Any) -> Any:
    """The best-ranked candidate that loads; ``backend.choice`` says why it was picked (and what fell through)."""
    from cxrtool.infer.backends import backend_class

    path = model.path
    found = candidates(model, device)
    notes: list[str] = []
    if device.startswith("cuda") and not any(c.backend == "tensorrt" for c in found):
        from cxrtool.runtimes.trt_runner import cuda_problem

        problem = cuda_problem(device)
        notes.append(
            f"TensorRT not used: {problem}" if problem else "TensorRT not used: no current engine for this model"
        )
    ranked = rank(found, device)
    if not ranked:
        raise CxrError(
            f"{path}: no available backend can run a '{path.suffix}' model on {device}"
            + "".join(f" ({n})" for n in notes)
        )
    for choice in ranked:
        c = choice.candidate
        try:
            engine = backend_class(c.backend).build(c.model, device=device, **{**options, **c.options})
        except CxrError as exc:
            notes.append(f"{c.label} failed to load ({exc})")
            continue
        engine.choice = "; ".join([f"{c.label}: {choice.reason}", *notes])
        return engine
    raise CxrError(f"{path}: no backend could load it on {device}: {'; '.join(notes)}")
