"""TensorRT backend: serialised engines built by ``cxrtool export --trt``, run through pycuda.

Kept thin on purpose (TensorRT cannot be installed on the development machines): everything that
decides *whether* an engine may run -- sidecar, version/GPU check, batch chunking -- is plain
Python in :mod:`cxrtool.export.tensorrt` and here (:func:`plan_chunks`), and is tested without it.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from cxrtool.errors import CxrError
from cxrtool.export.tensorrt import EngineSidecar, check_compatible, cuda_index, import_tensorrt, read_sidecar
from cxrtool.infer.backends import Backend

_CONTEXTS: dict[int, Any] = {}


def plan_chunks(n: int, min_batch: int, max_batch: int) -> list[tuple[int, int, int]]:
    """Split ``n`` samples into (start, stop, run_size) chunks the engine's profile accepts.

    Chunks hold at most ``max_batch`` samples; a chunk smaller than ``min_batch`` is run padded
    to ``min_batch`` (``run_size``) and the padding's outputs are dropped.
    """
    chunks = []
    for start in range(0, n, max_batch):
        stop = min(n, start + max_batch)
        chunks.append((start, stop, max(stop - start, min_batch)))
    return chunks


def _activate_cuda(index: int) -> Any:
    """Make device ``index``'s primary context current (the one torch and the CUDA runtime use)."""
    import pycuda.driver as cuda

    if index not in _CONTEXTS:
        cuda.init()
        if index >= cuda.Device.count():
            raise CxrError(f"cuda:{index} does not exist ({cuda.Device.count()} CUDA devices)")
        context = cuda.Device(index).retain_primary_context()
        context.push()
        _CONTEXTS[index] = context
    return cuda


def current_gpu(index: int) -> tuple[str, str]:
    """(name, compute capability "major.minor") of CUDA device ``index``."""
    cuda = _activate_cuda(index)
    device = cuda.Device(index)
    major, minor = device.compute_capability()
    return device.name(), f"{major}.{minor}"


class TrtRunner:
    """One engine, one execution context, page-locked host and device buffers sized for the max batch."""

    def __init__(self, engine_bytes: bytes, index: int):
        trt = import_tensorrt()
        cuda = _activate_cuda(index)
        self._cuda = cuda
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise CxrError("TensorRT could not deserialise the engine (built by another TensorRT version?); rebuild it")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        low, _, high = self.engine.get_tensor_profile_shape(self.input, 0)
        self.min_batch, self.max_batch = int(low[0]), int(high[0])
        self.sample_shape = tuple(int(d) for d in high[1:])
        self.context.set_input_shape(self.input, tuple(high))
        out_shape = tuple(int(d) for d in self.context.get_tensor_shape(self.output))
        self.stream = cuda.Stream()
        self.host_in = cuda.pagelocked_empty(tuple(high), trt.nptype(self.engine.get_tensor_dtype(self.input)))
        self.host_out = cuda.pagelocked_empty(out_shape, trt.nptype(self.engine.get_tensor_dtype(self.output)))
        self.dev_in = cuda.mem_alloc(self.host_in.nbytes)
        self.dev_out = cuda.mem_alloc(self.host_out.nbytes)
        self.context.set_tensor_address(self.input, int(self.dev_in))
        self.context.set_tensor_address(self.output, int(self.dev_out))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits for any number of samples (chunked and padded to fit the profile)."""
        outputs = []
        for start, stop, size in plan_chunks(len(batch), self.min_batch, self.max_batch):
            n = stop - start
            self.host_in[:n] = batch[start:stop]
            self.host_in[n:size] = 0
            self.context.set_input_shape(self.input, (size, *self.sample_shape))
            self._cuda.memcpy_htod_async(self.dev_in, self.host_in[:size], self.stream)
            if not self.context.execute_async_v3(self.stream.handle):
                raise CxrError("TensorRT execution failed (see the TensorRT log above)")
            self._cuda.memcpy_dtoh_async(self.host_out[:size], self.dev_out, self.stream)
            self.stream.synchronize()
            outputs.append(self.host_out[:n].astype(np.float32, copy=True))
        return np.concatenate(outputs)


class TensorRTBackend(Backend):
    name = "tensorrt"
    suffixes = (".engine", ".plan")

    def __init__(self, path: Path, sidecar: EngineSidecar, device: str, runner: TrtRunner):
        super().__init__(path, sidecar.card, device)
        self.sidecar = sidecar
        self.runner = runner

    @classmethod
    def is_available(cls, device: str) -> bool:
        has_libs = all(importlib.util.find_spec(m) is not None for m in ("tensorrt", "pycuda"))
        return device.startswith("cuda") and has_libs

    @classmethod
    def load(cls, path: Path, *, device: str = "cuda", **options: Any) -> TensorRTBackend:
        """Check the sidecar against this machine, then deserialise.  Options are ignored."""
        index = cuda_index(device)
        sidecar = read_sidecar(path)
        trt = import_tensorrt()
        gpu_name, capability = current_gpu(index)
        data = Path(path).read_bytes()
        check_compatible(
            sidecar, path, tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=capability, engine_sha256=hashlib.sha256(data).hexdigest()
        )
        return cls(Path(path), sidecar, device, TrtRunner(data, index))

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.runner.infer(np.ascontiguousarray(batch, dtype=np.float32))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.sidecar.precision, "tensorrt": self.sidecar.tensorrt_version}
