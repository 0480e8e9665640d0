"""Fake ``tensorrt`` and ``pycuda`` modules for GPU-less tests of the TensorRT path.

Names and signatures follow the real bindings (NVIDIA/TensorRT ``python/src/infer/pyCore.cpp``:
``Builder.create_network(flags)``, ``create_builder_config``, ``create_optimization_profile``,
``IOptimizationProfile.set_shape(name, min, opt, max)``, ``IBuilderConfig.set_memory_pool_limit``,
``add_optimization_profile`` -> int, ``build_serialized_network`` -> host memory or None,
``OnnxParser.parse``/``num_errors``/``get_error``, ``Runtime.deserialize_cuda_engine``,
``ICudaEngine.num_io_tensors``/``get_tensor_name``/``get_tensor_mode``/``get_tensor_dtype``/
``get_tensor_profile_shape(name, profile)``, ``IExecutionContext.set_input_shape`` -> bool,
``get_tensor_shape``, ``set_tensor_address`` -> bool, ``execute_async_v3(stream)`` -> bool;
pycuda's ``driver.init``, ``Device.count``/``retain_primary_context``/``name``/``compute_capability``,
``Context.push`` and the static ``Context.pop``, ``Stream``, ``mem_alloc``, ``pagelocked_empty``,
``memcpy_htod_async``/``memcpy_dtoh_async``).

Two TensorRT flavours, with the flag sets of the real bindings (TensorRT Python API docs, 10.x and
11.0 ``Builder``; the 10.x -> 11.x migration guide):

* ``major=10``: ``NetworkDefinitionCreationFlag`` EXPLICIT_BATCH (deprecated), STRONGLY_TYPED,
  PREFER_AOT/JIT_PYTHON_PLUGINS; ``BuilderFlag`` with the weak-typing precisions (FP16, INT8, BF16,
  FP8 ...); ``IBuilderConfig.int8_calibrator`` and ``set_calibration_profile`` (deprecated, there);
* ``major=11``: STRONGLY_TYPED is still there ("deprecated in 11.0 ... retained for API
  compatibility but is ignored"; using it is recorded as ``("deprecated", ...)``), EXPLICIT_BATCH is
  gone; ``BuilderFlag`` has no precision flags; no calibrator API.

Strictness that matters (each mirrors the real bindings):

* the ONNX parser refuses UINT8 QuantizeLinear/DequantizeLinear (onnx-tensorrt ``docs/operators.md``:
  Q/DQ are INT8 or FP8 on the GPU; a missing zero point means UINT8 in ONNX);
* ``IOptimizationProfile.set_shape`` raises ``RuntimeError`` on min/opt/max that do not nest (the
  bindings' ``opt_profile_set_shape``); ``IExecutionContext.set_input_shape`` returns False outside
  the profile;
* the build records the CUDA device current at ``build_serialized_network`` (the builder uses the
  current context, or device 0's when none is current, as the CUDA runtime does);
* the engine's I/O are the ONNX graph's (``logits`` and ``features``), with the ONNX's dtypes
  from ``get_tensor_dtype``.

The fake "engine" is the ONNX the parser received, run by ONNX Runtime on the "device" buffers,
so a build -> run -> parity sequence computes real outputs.  The fake pycuda keeps a context stack;
every device operation asserts that the current context belongs to the device the memory was
allocated on, and at interpreter exit it aborts (exit code 134) when the stack is not empty, as
pycuda's context-stack destructor does.
"""

from __future__ import annotations

import atexit
import enum
import json
import os
import sys
import types

import numpy as np

PLAN_MAGIC = b"FAKEPLAN"


#: ``BuilderFlag`` members in both 10.x and 11.x (values as in the 10.x enum)
BUILDER_FLAGS_COMMON = {
    "DEBUG": 2,
    "GPU_FALLBACK": 3,
    "REFIT": 4,
    "DISABLE_TIMING_CACHE": 5,
    "TF32": 6,
    "SPARSE_WEIGHTS": 7,
    "SAFETY_SCOPE": 8,
    "REJECT_EMPTY_ALGORITHMS": 12,
    "VERSION_COMPATIBLE": 13,
    "EXCLUDE_LEAN_RUNTIME": 14,
    "ERROR_ON_TIMING_CACHE_MISS": 16,
    "DISABLE_COMPILATION_CACHE": 18,
    "STRIP_PLAN": 19,
    "REFIT_IDENTICAL": 20,
    "WEIGHT_STREAMING": 21,
    "REFIT_INDIVIDUAL": 23,
    "STRICT_NANS": 24,
    "MONITOR_MEMORY": 25,
    "EDITABLE_TIMING_CACHE": 27,
}
#: the weak-typing flags 11.x removed (migration guide: "removes all precision-enabling builder flags")
WEAK_TYPING_FLAGS = {
    "FP16": 0,
    "INT8": 1,
    "OBEY_PRECISION_CONSTRAINTS": 9,
    "PREFER_PRECISION_CONSTRAINTS": 10,
    "DIRECT_IO": 11,
    "FP8": 15,
    "BF16": 17,
    "INT4": 22,
    "FP4": 26,
}


def qdq_dtype(graph, node) -> int | None:
    """The quantized type of a QuantizeLinear/DequantizeLinear node (ONNX TensorProto enum), None for other nodes.

    The zero point's type when there is one; without it QuantizeLinear means UINT8 (the ONNX
    default) and DequantizeLinear takes its input's type.
    """
    if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
        return None
    inits = {i.name: i.data_type for i in graph.initializer}
    constants = {n.output[0]: n.attribute[0].t.data_type for n in graph.node if n.op_type == "Constant" and n.attribute}
    if len(node.input) > 2 and node.input[2]:
        return inits.get(node.input[2], constants.get(node.input[2]))
    if node.op_type == "QuantizeLinear":
        return 2  # TensorProto.UINT8
    producer = next((n for n in graph.node if node.input[0] in n.output), None)
    return qdq_dtype(graph, producer) if producer is not None else inits.get(node.input[0])


def fake_tensorrt(major: int, calls: list) -> types.ModuleType:
    """A ``tensorrt`` module; every builder-side call is appended to ``calls`` as (name, args)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = {10: "10.13.3.9", 11: "11.4.0.5"}.get(major, f"{major}.0.0")

    class Logger:
        WARNING = 2

        def __init__(self, severity=WARNING):
            self.severity = severity

    trt.Logger = Logger
    if major == 10:
        network_flags = {
            "EXPLICIT_BATCH": 0,
            "STRONGLY_TYPED": 1,
            "PREFER_AOT_PYTHON_PLUGINS": 2,
            "PREFER_JIT_PYTHON_PLUGINS": 3,
        }
        builder_flags = {**BUILDER_FLAGS_COMMON, **WEAK_TYPING_FLAGS}
    else:
        network_flags = {"STRONGLY_TYPED": 1, "PREFER_AOT_PYTHON_PLUGINS": 2, "PREFER_JIT_PYTHON_PLUGINS": 3}
        builder_flags = dict(BUILDER_FLAGS_COMMON)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", network_flags)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0}, start=0)
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2}, start=0)
    trt.DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3}, start=0)
    trt.nptype = lambda dtype: {0: np.float32, 1: np.float16, 2: np.int8, 3: np.int32}[int(dtype)]
    onnx_to_trt = {1: trt.DataType.FLOAT, 10: trt.DataType.HALF, 3: trt.DataType.INT8, 6: trt.DataType.INT32}

    class Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs: list[Tensor] = []
            self.outputs: list[Tensor] = []
            self.onnx = b""

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors: list[str] = []

        def parse(self, model: bytes) -> bool:
            import onnx

            calls.append(("parse", len(model)))
            try:
                proto = onnx.load_model_from_string(model)
            except Exception as exc:
                self.errors.append(f"In node -1 (parseGraph): INVALID_GRAPH: {exc}")
                return False
            for i, node in enumerate(proto.graph.node):
                dtype = qdq_dtype(proto.graph, node)
                if dtype is not None and dtype not in (onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN):
                    name = onnx.TensorProto.DataType.Name(dtype)
                    self.errors.append(
                        f"In node {i} with name: {node.name} and operator: {node.op_type} "
                        f"(importQDQ): UNSUPPORTED_NODE: {name} {node.op_type} is not supported; use INT8 or FP8"
                    )
            if self.errors:
                return False
            self.network.onnx = model
            self.network.inputs = [Tensor(i.name) for i in proto.graph.input]
            self.network.outputs = [Tensor(o.name) for o in proto.graph.output]
            return True

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, min, opt, max):  # noqa: A002 (the bindings' own argument names)
            calls.append(("set_shape", name, tuple(min), tuple(opt), tuple(max)))
            if len(min) != len(opt) or len(opt) != len(max) or any(a < 0 for a in min):
                raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
            if not all(a <= b for a, b in zip(min, opt)):
                raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
            if not all(a <= b for a, b in zip(opt, max)):
                raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
            self.shapes[name] = (tuple(min), tuple(opt), tuple(max))

    class Config:
        def __init__(self):
            self.profiles: list[Profile] = []
            self.flags_set: list = []

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool, size))

        def add_optimization_profile(self, profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def set_flag(self, flag):
            calls.append(("set_flag", flag))
            self.flags_set.append(flag)

    if major == 10:

        def set_calibration_profile(self, profile):
            calls.append(("set_calibration_profile",))

        Config.set_calibration_profile = set_calibration_profile
        Config.int8_calibrator = None

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            calls.append(("create_network", flags))
            strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
            if major >= 11 and strongly_typed is not None and flags & (1 << int(strongly_typed)):
                calls.append(("deprecated", "NetworkDefinitionCreationFlag.STRONGLY_TYPED"))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            driver = sys.modules.get("pycuda.driver")
            stack = getattr(driver, "stack", [])
            device = stack[-1].index if stack else 0  # no current context: the runtime's default device 0
            calls.append(("build_serialized_network", list(config.flags_set)))
            calls.append(("build_device", device))
            if not config.profiles:
                return None
            header = {"profile": {k: v for k, v in config.profiles[0].shapes.items()}, "device": device}
            return PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx

    class Engine:
        def __init__(self, header, onnx_bytes):
            import onnx
            import onnxruntime as ort

            self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            self.profile = {k: [tuple(s) for s in v] for k, v in header["profile"].items()}
            self.inputs = [i.name for i in self.session.get_inputs()]
            self.outputs = [o.name for o in self.session.get_outputs()]
            self.device = header["device"]
            graph = onnx.load_model_from_string(onnx_bytes).graph
            self.dtypes = {v.name: onnx_to_trt[v.type.tensor_type.elem_type] for v in [*graph.input, *graph.output]}

        num_io_tensors = property(lambda self: len(self.inputs) + len(self.outputs))

        def get_tensor_name(self, i):
            return (self.inputs + self.outputs)[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return self.dtypes[name]

        def get_tensor_profile_shape(self, name, profile_index):
            return self.profile[name]

        def create_execution_context(self):
            return ExecutionContext(self)

    class ExecutionContext:
        def __init__(self, engine):
            self.engine = engine
            self.input_shape = None
            self.addresses: dict[str, int] = {}

        def set_input_shape(self, name, shape) -> bool:
            low, _, high = self.engine.profile[name]
            if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
                return False
            self.input_shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            if name in self.engine.inputs:
                return self.input_shape
            n = self.input_shape[0]
            probe = self.engine.session.run(
                [name], {self.engine.inputs[0]: np.zeros((1, *self.input_shape[1:]), np.float32)}
            )[0]
            return (n, *probe.shape[1:])

        def set_tensor_address(self, name, address) -> bool:
            self.addresses[name] = int(address)
            return name in self.engine.inputs + self.engine.outputs

        def execute_async_v3(self, stream_handle) -> bool:
            driver = sys.modules["pycuda.driver"]
            n = self.input_shape[0]
            x = driver.device_array(self.addresses[self.engine.inputs[0]])
            outs = self.engine.session.run(
                self.engine.outputs,
                {self.engine.inputs[0]: x[: int(np.prod(self.input_shape))].reshape(self.input_shape)},
            )
            for name, value in zip(self.engine.outputs, outs):
                driver.device_array(self.addresses[name])[: value.size] = value.ravel()
            calls.append(("execute_async_v3", n))
            return True

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan: bytes):
            if not plan.startswith(PLAN_MAGIC):
                return None
            header, onnx_bytes = plan[len(PLAN_MAGIC) :].split(b"\n", 1)
            return Engine(json.loads(header), onnx_bytes)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def fake_pycuda(
    devices: tuple[str, ...] = ("NVIDIA H200",), *, abort_at_exit: bool = True
) -> tuple[types.ModuleType, types.ModuleType]:
    """``(pycuda, pycuda.driver)``: a context stack, device memory as numpy arrays, pushes/pops counted."""
    pycuda = types.ModuleType("pycuda")
    driver = types.ModuleType("pycuda.driver")
    pycuda.driver = driver
    driver.stack = []  # contexts, innermost last
    driver.pushes = driver.pops = driver.retains = 0
    driver.memory = {}  # address -> (device index, array)

    class Error(Exception):
        pass

    driver.Error = Error
    driver.init = lambda flags=0: None

    class Context:
        def __init__(self, index):
            self.index = index

        def push(self):
            driver.pushes += 1
            driver.stack.append(self)

        @staticmethod
        def pop():
            if not driver.stack:
                raise Error("cuCtxPopCurrent failed: invalid device context")
            driver.pops += 1
            driver.stack.pop()

        @staticmethod
        def get_current():
            return driver.stack[-1] if driver.stack else None

    driver.Context = Context

    class Device:
        def __init__(self, index):
            if index >= len(devices):
                raise Error("cuDeviceGet failed: invalid device ordinal")
            self.index = index

        @staticmethod
        def count():
            return len(devices)

        def name(self):
            return devices[self.index]

        def compute_capability(self):
            return (9, 0)

        def retain_primary_context(self):
            driver.retains += 1
            return Context(self.index)

    driver.Device = Device

    def current_device() -> int:
        if not driver.stack:
            raise Error("invalid device context: no context is current")
        return driver.stack[-1].index

    class Allocation:
        def __init__(self, address):
            self.address = address

        def __int__(self):
            return self.address

    def mem_alloc(nbytes):
        address = 0x1000 * (len(driver.memory) + 1)
        driver.memory[address] = (current_device(), np.zeros(nbytes // 4, np.float32))
        return Allocation(address)

    def device_array(address) -> np.ndarray:
        device, array = driver.memory[int(address)]
        assert current_device() == device, f"memory of cuda:{device} used in the context of cuda:{current_device()}"
        return array

    class Stream:
        def __init__(self):
            self.device = current_device()
            self.handle = 7

        def synchronize(self):
            assert current_device() == self.device

    def memcpy_htod_async(dest, src, stream=None):
        flat = np.ascontiguousarray(src, np.float32).ravel()
        device_array(dest)[: flat.size] = flat

    def memcpy_dtoh_async(dest, src, stream=None):
        dest.reshape(-1)[:] = device_array(src)[: dest.size]

    driver.mem_alloc, driver.device_array, driver.Stream = mem_alloc, device_array, Stream
    driver.memcpy_htod_async, driver.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    driver.pagelocked_empty = lambda shape, dtype: np.empty(shape, dtype)

    if abort_at_exit:

        def check_stack_at_exit():
            if driver.stack:
                sys.stderr.write("PyCUDA ERROR: The context stack was not empty upon module cleanup.\n")
                sys.stderr.flush()
                os._exit(134)

        atexit.register(check_stack_at_exit)
    return pycuda, driver


def install(
    monkeypatch, major: int, devices: tuple[str, ...] = ("NVIDIA H200",)
) -> tuple[types.ModuleType, types.ModuleType, list]:
    """Put both fakes in ``sys.modules`` for one test and clear cxrtool's per-process CUDA caches."""
    from cxrtool.runtimes import trt_runner

    calls: list = []
    trt = fake_tensorrt(major, calls)
    pycuda, driver = fake_pycuda(devices, abort_at_exit=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "pycuda", pycuda)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    monkeypatch.setattr(trt_runner, "_PRIMARY", {})
    trt_runner.cuda_problem.cache_clear()
    return trt, driver, calls
