"""TensorRT execution on a CUDA device through pycuda: device contexts, availability, the engine runner.

Shared by the engine build's checks (:mod:`cxrtool.export.pipeline`) and the inference backend
(:mod:`cxrtool.infer.trt_backend`), so neither package imports the other.

CUDA context lifecycle (the part that crashes when done wrong): every device's *primary* context
(the one torch and the CUDA runtime use) is retained once and made current only for the duration
of each use -- :func:`device_context` pushes it and always pops it.  So the context stack is
empty between calls and at interpreter exit (pycuda aborts the process when it is not), and a
runner always runs in its own device's context even when runners for several GPUs alternate.

Whether TensorRT can run at all is :func:`cuda_problem`: pycuda importable, the driver
initialises, the device exists, the bindings are a supported major.  ``auto`` asks it before
choosing TensorRT; an explicit ``--backend tensorrt`` turns its answer into a one-line error.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np

from cxrtool.errors import CxrError, one_line
from cxrtool.modelfile import FEATURES_NAME, OUTPUT_NAME
from cxrtool.runtimes.trtlib import cuda_index, import_tensorrt

_PRIMARY: dict[int, Any] = {}


def _driver() -> Any:
    """``pycuda.driver``, initialised, or a one-line reason."""
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise CxrError("pycuda is not installed (pip install 'cxrtool[trt]')") from None
    except Exception as exc:  # a build against another CUDA, a missing libcuda.so
        raise CxrError(f"pycuda cannot load ({one_line(exc)})") from None
    try:
        cuda.init()
    except Exception as exc:  # pycuda._driver.Error / RuntimeError: no driver, no device
        raise CxrError(f"the CUDA driver does not initialise ({one_line(exc)})") from None
    return cuda


@contextlib.contextmanager
def device_context(index: int) -> Iterator[Any]:
    """Device ``index``'s primary context current for the block (retained once, pushed, always popped)."""
    cuda = _driver()
    context = _PRIMARY.get(index)
    if context is None:
        count = cuda.Device.count()
        if index >= count:
            raise CxrError(f"cuda:{index} does not exist ({count} CUDA devices)")
        context = _PRIMARY[index] = cuda.Device(index).retain_primary_context()
    context.push()
    try:
        yield cuda
    finally:
        cuda.Context.pop()


@functools.lru_cache(maxsize=None)
def cuda_problem(device: str) -> str | None:
    """Why TensorRT cannot run on ``device`` here, or None when it can (checked once per device)."""
    try:
        index = cuda_index(device)
        import_tensorrt()
        with device_context(index):
            pass
    except CxrError as exc:
        return str(exc)
    return None


def current_gpu(index: int) -> tuple[str, str]:
    """(name, compute capability "major.minor") of CUDA device ``index``."""
    with device_context(index) as cuda:
        device = cuda.Device(index)
        major, minor = device.compute_capability()
        return device.name(), f"{major}.{minor}"


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


class TrtRunner:
    """One engine, one execution context, page-locked host and device buffers sized for the max batch.

    Every method runs inside :func:`device_context` of the runner's own device.
    """

    def __init__(self, engine_bytes: bytes, index: int):
        trt = import_tensorrt()
        self.index = index
        with device_context(index) as cuda:
            self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
            if self.engine is None:
                raise CxrError(
                    "TensorRT could not deserialise the engine (built by another TensorRT version?); rebuild it"
                )
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise CxrError("TensorRT could not create an execution context (out of GPU memory?)")
            names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
            inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
            if len(inputs) != 1 or not self.outputs:
                raise CxrError(
                    f"engine has inputs {inputs} and outputs {self.outputs}; expected one input and the logits"
                )
            self.input = inputs[0]
            self.logits = OUTPUT_NAME if OUTPUT_NAME in self.outputs else self.outputs[0]
            #: the pooled features the OOD score is computed on; None for an engine built before they existed
            self.features = FEATURES_NAME if FEATURES_NAME in self.outputs else None
            low, _, high = self.engine.get_tensor_profile_shape(self.input, 0)
            self.min_batch, self.max_batch = int(low[0]), int(high[0])
            self.sample_shape = tuple(int(d) for d in high[1:])
            self._set_shape(self.max_batch)
            self.stream = cuda.Stream()
            self.host: dict[str, np.ndarray] = {}
            self.dev: dict[str, Any] = {}
            for name in [self.input, *self.outputs]:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
                self.host[name] = cuda.pagelocked_empty(shape, trt.nptype(self.engine.get_tensor_dtype(name)))
                self.dev[name] = cuda.mem_alloc(self.host[name].nbytes)
                if not self.context.set_tensor_address(name, int(self.dev[name])):
                    raise CxrError(f"TensorRT refused the device address of tensor {name!r}")

    def _set_shape(self, size: int) -> None:
        shape = (size, *self.sample_shape)
        if not self.context.set_input_shape(self.input, shape):
            raise CxrError(
                f"TensorRT refused input shape {shape} (engine profile: batch {self.min_batch}..{self.max_batch})"
            )

    def infer_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for any number of samples (chunked and padded to fit the profile); empty in, empty out."""
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.sample_shape:
            raise CxrError(
                f"input batch of shape {batch.shape}; this engine takes (N, {', '.join(map(str, self.sample_shape))})"
            )
        if len(batch) == 0:
            return {name: np.empty((0, *self.host[name].shape[1:]), np.float32) for name in self.outputs}
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.outputs}
        with device_context(self.index) as cuda:
            host_in = self.host[self.input]
            for start, stop, size in plan_chunks(len(batch), self.min_batch, self.max_batch):
                n = stop - start
                host_in[:n] = batch[start:stop]
                host_in[n:size] = 0
                self._set_shape(size)
                cuda.memcpy_htod_async(self.dev[self.input], host_in[:size], self.stream)
                if not self.context.execute_async_v3(self.stream.handle):
                    raise CxrError("TensorRT execution failed (see the TensorRT log above)")
                for name in self.outputs:
                    cuda.memcpy_dtoh_async(self.host[name][:size], self.dev[name], self.stream)
                self.stream.synchronize()
                for name in self.outputs:
                    parts[name].append(self.host[name][:n].astype(np.float32, copy=True))
        return {name: np.concatenate(p) for name, p in parts.items()}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Logits for any number of samples."""
        return self.infer_outputs(batch)[self.logits]
