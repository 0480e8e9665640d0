"""Inference runtimes' plumbing (ONNX Runtime sessions, TensorRT bindings, CUDA contexts and engine runners).

Used by both :mod:`cxrtool.export` (parity checks of what it writes) and :mod:`cxrtool.infer`
(the backends), which never import each other.  Nothing here imports a runtime at import time.
"""
