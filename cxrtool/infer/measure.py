"""``cxrtool bench``: model-only and end-to-end images/s for every backend and batch size, in one run.

All numbers of one report come from the same process on the same inputs, so the ratios between
them (ONNX Runtime vs torch eager, OpenVINO bf16 vs ONNX Runtime fp32, end-to-end vs the ideal
``1 / (decode + model)`` per image) hold even on a machine shared with other work; the load
average before and after is recorded so a reader can judge the absolute numbers.

Model-only speed is the median over repeated runs of one batch of real preprocessed films
(seeded noise without ``data``); end-to-end speed is a full :func:`~cxrtool.infer.predict.predict_to_file`
run (discovery, decode workers, inference, streamed CSV) after one untimed warm-up batch.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cxrtool.config import PreprocessCfg
from cxrtool.errors import CxrError, ImageLoadError
from cxrtool.infer.options import BENCH_BATCH_SIZES, BENCH_IMAGES, BENCH_MIN_TIME, PredictOptions
from cxrtool.infer.predict import decode_file, predict_to_file
from cxrtool.inputs import iter_input_files

if TYPE_CHECKING:
    from cxrtool.infer.auto import Candidate
    from cxrtool.infer.backends import Backend

#: backends in the order they are measured; the first one measured is the top-1 agreement reference
REFERENCE_ORDER = ("torch", "onnxruntime", "openvino", "tensorrt")
#: variants that run in reduced precision (the rest are fp32 and set the bar ``auto`` must reach)
REDUCED = ("openvino-bf16", "openvino-int8", "tensorrt")


@dataclass
class BenchRow:
    """One backend variant at one batch size."""

    variant: str
    batch_size: int
    model_ips: float
    e2e_ips: float | None = None
    ideal_e2e_ips: float | None = None  # 1 / (decode + model) per image

    @property
    def e2e_ratio(self) -> float | None:
        return self.e2e_ips / self.ideal_e2e_ips if self.e2e_ips and self.ideal_e2e_ips else None


@dataclass
class BenchReport:
    """Everything one bench run measured (``to_dict`` for ``--json``)."""

    machine: dict[str, Any]
    inputs: dict[str, Any]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # describe() + agreement
    rows: list[BenchRow] = field(default_factory=list)
    decode_ms: float | None = None
    auto: dict[str, Any] = field(default_factory=dict)  # what ``--backend auto`` picks from these numbers
    saved_to: str | None = None  # the per-machine speed cache written by ``save``

    def row(self, variant: str, batch_size: int) -> BenchRow | None:
        return next((r for r in self.rows if r.variant == variant and r.batch_size == batch_size), None)

    def ratios(self) -> list[dict[str, Any]]:
        """Model-only speed-ups the issue asks for, at every batch size where both sides ran."""
        out = []
        names = list(self.variants)
        pairs = [("onnxruntime", "torch")] + [(v, "onnxruntime") for v in names if v.startswith("openvino")]
        pairs += [("openvino-int8", v) for v in ("openvino-f32", "openvino-bf16") if v in names]
        for num, den in pairs:
            if num not in self.variants or den not in self.variants:
                continue
            for r in self.rows:
                if r.variant == num and (d := self.row(den, r.batch_size)):
                    out.append(
                        {
                            "variant": num,
                            "baseline": den,
                            "batch_size": r.batch_size,
                            "speedup": r.model_ips / d.model_ips,
                        }
                    )
        return out

    def to_dict(self) -> dict[str, Any]:
        rows = [{**asdict(r), "e2e_ratio": r.e2e_ratio} for r in self.rows]
        return {
            "machine": self.machine,
            "inputs": self.inputs,
            "decode_ms_per_image": self.decode_ms,
            "variants": self.variants,
            "rows": rows,
            "ratios": self.ratios(),
            "auto": self.auto,
            "saved_to": self.saved_to,
        }


def machine_info() -> dict[str, Any]:
    """CPU, cores, threads and load: what a reader needs to judge absolute numbers."""
    import torch

    from cxrtool.cpu import cpu_name

    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_before": _load(),
    }


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def sample_files(data: Path, n: int) -> list[Path]:
    """``n`` files spread evenly over ``data`` (all when n <= 0), so every class folder is in the sample."""
    files = list(iter_input_files([data]))
    if not files:
        raise CxrError(f"{data}: no input files to benchmark on")
    if 0 < n < len(files):
        files = [files[round(i * (len(files) - 1) / (n - 1))] for i in range(n)] if n > 1 else files[:1]
    return files


def _variant_specs(models: Sequence[Path], backends: Sequence[str] | None, device: str) -> list[Candidate]:
    """Every way to run ``models`` here (:func:`cxrtool.infer.auto.candidates`), torch fp32 first."""
    from cxrtool.infer.auto import candidates
    from cxrtool.modelfile.loaded import open_model

    specs: dict[str, Candidate] = {}
    for path in models:
        found = candidates(open_model(path), device)
        if not found:
            raise CxrError(f"{path}: no available backend can load it on {device}")
        for c in found:
            if not backends or c.backend in backends:
                specs.setdefault(c.label, c)
    if not specs:
        raise CxrError("no backend to benchmark (check --model and --backend)")
    order = lambda c: REFERENCE_ORDER.index(c.backend) if c.backend in REFERENCE_ORDER else len(REFERENCE_ORDER)  # noqa: E731
    return sorted(specs.values(), key=order)


def _inputs(
    files: list[Path], cfg: PreprocessCfg, n_noise: int, step: Any
) -> tuple[np.ndarray, float | None, list[Path]]:
    """Preprocessed films, the mean decode time per film and the films that decoded; seeded noise when there are none.

    An unreadable file (the demo's deliberately truncated one) is left out, not fatal: the caller reports the count.
    """
    if not files:
        shape = (n_noise, cfg.channels, cfg.input_size, cfg.input_size)
        return np.random.default_rng(0).standard_normal(shape).astype(np.float32), None, []
    step(f"decoding {len(files)} films")
    start = time.perf_counter()
    decoded, readable = [], []
    for f in files:
        try:
            decoded.append(decode_file(str(f), cfg))
            readable.append(f)
        except ImageLoadError:
            continue
    if not decoded:
        raise CxrError(f"none of the {len(files)} files under --data could be read as a film")
    return np.stack(decoded), (time.perf_counter() - start) / len(files) * 1e3, readable


def _time_model(engine: Backend, batch: np.ndarray, min_time: float, min_runs: int = 3) -> float:
    """Images/s from the median of repeated runs after two warm-ups (robust to a shared CPU)."""
    for _ in range(2):
        engine.run(batch)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        engine.run(batch)
        times.append(time.perf_counter() - t)
    return len(batch) / statistics.median(times)


def _logits(engine: Backend, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    return np.concatenate([engine.run(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def run_bench(
    models: Sequence[str | Path],
    *,
    data: str | Path | None = None,
    backends: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = BENCH_BATCH_SIZES,
    images: int = BENCH_IMAGES,
    min_time: float = BENCH_MIN_TIME,
    workers: int | None = None,
    device: str = "cpu",
    save: bool = False,
    on_step: Any = None,
) -> BenchReport:
    """Measure every available backend variant of ``models`` at every batch size.

    Parameters
    ----------
    models:
        Model files: a checkpoint (torch) and/or its exported ONNX (onnxruntime, openvino).
    data:
        Folder of real films for decode time, end-to-end runs and top-1 agreement; without it
        only model-only speed is measured, on seeded noise.
    backends:
        Restrict to these backend names (default: all that are available).
    batch_sizes:
        Batch sizes for model-only and end-to-end runs.
    images:
        Films sampled evenly from ``data`` (0 = all).
    min_time:
        Seconds of timed model-only runs per row (at least 3 runs); each end-to-end run repeats the
        films to last about as long.
    workers:
        Decode processes of the end-to-end runs (default: predict's choice per backend, :func:`default_workers`).
    device:
        ``cpu`` or ``cuda``.
    save:
        Store the model-only speeds in the per-machine cache ``auto`` decides by
        (:func:`cxrtool.infer.auto.save_measurements`).
    on_step:
        Called with a short text before each measurement (progress display).

    Returns
    -------
    BenchReport
        Rows, ratios, decode time, agreement and machine information.
    """
    from cxrtool.infer.loading import load_backend

    models = [Path(m) for m in models]
    step = on_step or (lambda text: None)
    specs = _variant_specs(models, backends, device)
    files = sample_files(Path(data), images) if data else []
    report = BenchReport(
        machine=machine_info(),
        inputs={
            "data": str(data) if data else None,
            "images": len(files),
            "batch_sizes": list(batch_sizes),
            "workers": "per backend (predict's default)" if workers is None else workers,
            "device": device,
        },
    )
    cfg: PreprocessCfg | None = None
    inputs = np.empty(0, dtype=np.float32)
    reference: np.ndarray | None = None
    measured: list[tuple[Path, str, int, float]] = []
    with tempfile.TemporaryDirectory(prefix="cxrtool-bench-") as tmp:
        for spec in specs:
            label = spec.label
            step(f"loading {label}")
            # one at a time: no idle thread pools
            engine = load_backend(spec.model, backend=spec.backend, device=device, **spec.options)
            if cfg is None:  # the first model decides the inputs; every other must agree
                cfg = engine.card.preprocess
                report.inputs["input_size"] = cfg.input_size
                inputs, report.decode_ms, readable = _inputs(files, cfg, max(batch_sizes), step)
                report.inputs["unreadable_skipped"] = len(files) - len(readable)
                files = readable
            elif engine.card.preprocess != cfg:
                raise CxrError(f"{spec.path}: preprocessing differs from {specs[0].path}; bench one model at a time")
            info = dict(engine.describe())
            step(f"{label}: top-1 agreement on {len(inputs)} inputs")
            logits = _logits(engine, inputs, max(batch_sizes))
            if reference is None:
                reference, info["reference"] = logits, True
            info["top1_agreement"] = float(np.mean(logits.argmax(1) == reference.argmax(1)))
            info["max_abs_logit_diff"] = float(np.abs(logits - reference).max())
            report.variants[label] = info
            for bs in batch_sizes:
                step(f"{label}: model-only, batch {bs}")
                batch = np.resize(inputs, (bs, *inputs.shape[1:]))
                row = BenchRow(label, bs, _time_model(engine, batch, min_time))
                if files:
                    step(f"{label}: end-to-end predict, batch {bs}, {len(files)} films")
                    # enough films for about min_time seconds at the model-only speed
                    row.e2e_ips = _time_e2e(engine, files, bs, workers, Path(tmp), int(min_time * row.model_ips))
                    row.ideal_e2e_ips = 1.0 / (report.decode_ms / 1e3 + 1.0 / row.model_ips)
                report.rows.append(row)
                measured.append((spec.path, label, bs, row.model_ips))
            del engine
    report.auto = _auto_choice(specs, measured, device)
    if save:
        from cxrtool.infer.auto import save_measurements

        report.saved_to = str(save_measurements(measured))
    report.machine["load_after"] = _load()
    return report


def _auto_choice(specs: list[Candidate], measured: list[tuple[Path, str, int, float]], device: str) -> dict[str, Any]:
    """What ``auto`` picks given this run's model-only numbers (at the deciding batch, else the largest)."""
    from cxrtool.infer.auto import DECIDING_BATCH, _file_key, rank

    sizes = {bs for _, _, bs, _ in measured}
    bs = DECIDING_BATCH if DECIDING_BATCH in sizes else max(sizes)
    numbers = {
        f"{_file_key(p)}|{label}": {"model_ips": ips, "batch_size": b} for p, label, b, ips in measured if b == bs
    }
    ranked = rank(specs, device, numbers)
    if not ranked:
        return {}
    chosen = ranked[0].candidate.label
    speeds = {label: ips for _, label, b, ips in measured if b == bs}
    fp32 = {label: ips for label, ips in speeds.items() if label not in REDUCED and not label.startswith("tensorrt")}
    best_fp32 = max(fp32, key=fp32.get) if fp32 else None
    return {
        "variant": chosen,
        "reason": ranked[0].reason,
        "batch_size": bs,
        "fastest_fp32": best_fp32,
        "vs_fastest_fp32": speeds[chosen] / fp32[best_fp32] if best_fp32 else None,
    }


def _time_e2e(
    engine: Backend, files: list[Path], batch_size: int, workers: int | None, tmp: Path, min_images: int
) -> float:
    """Images/s of a full predict run over ``files``, repeated (as links) to at least ``min_images``.

    A run has fixed costs (reading the model's statistics, hashing the model file for its id): on
    64 films of a fast model they were a third of the time, so the films are repeated until the run
    is long enough to measure throughput; an untimed warm-up run on one batch comes first.
    """
    out = tmp / "e2e.csv"
    options = PredictOptions(batch_size=batch_size, workers=workers, overwrite=True)
    predict_to_file(files[:batch_size], engine, out, options)
    count = max(len(files), min_images)
    links = tmp / f"e2e-films-{count}"
    if not links.exists():
        links.mkdir()
        for i in range(count):
            f = files[i % len(files)]
            (links / f"{i:06d}{''.join(f.suffixes)}").symlink_to(f.resolve())
    summary = predict_to_file([links], engine, out, options)
    if summary.failed:
        raise CxrError(f"{summary.failed} bench films failed to decode, e.g. {summary.failures[0]}")
    return summary.images_per_s
