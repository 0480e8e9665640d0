"""Write model files for fast inference: ONNX (card inside), NNCF INT8, TensorRT engines.

One module per concern: :mod:`~cxrtool.export.onnx` (checkpoint -> ONNX, checked against torch),
:mod:`~cxrtool.export.calib_films` and :mod:`~cxrtool.export.int8` (NNCF post-training
quantization gated on held-out films), :mod:`~cxrtool.export.options` and
:mod:`~cxrtool.export.trt_build` (TensorRT 10/11, explicit precision).  This package writes files
only; checking an engine with a runtime, and the whole ``cxrtool export`` sequence, is
:mod:`cxrtool.export.pipeline`, so nothing here imports :mod:`cxrtool.infer`.  Importing it loads no
torch, onnx, NNCF or TensorRT.
"""
