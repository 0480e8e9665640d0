"""Q/DQ ONNX as TensorRT's parser takes it: every QuantizeLinear/DequantizeLinear signed INT8, zero point 0.

NNCF's ONNX backend writes UINT8 Q/DQ for activations it sees as non-negative (every ReLU -> Conv
input of a DenseNet) and offers no working switch against it: forcing signed activations
(``QuantizationParameters(signedness_to_force=True)``) is refused by its own hardware configs
(NNCF 3.4: "constraints ... incompatible with HW capabilities").  onnx-tensorrt accepts only INT8
(and FP8) Q/DQ with a zero point of 0 on the GPU.  So the symmetric UINT8 quantizers NNCF writes
are re-encoded as the signed symmetric quantizers that cover the same range: zero point 0 as
INT8, scale ``s * 255 / 127`` (levels 0..255 of ``s`` become 0..127 of the new scale).  That is
exactly what a signed quantizer calibrated on the same range would be: it keeps the range and
halves the resolution of those activations; the held-out INT8 gate runs on the re-encoded file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrtool.errors import CxrError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def qdq_zero_point_types(model: Any) -> list[str]:
    """Per Q/DQ node, its quantized type name (``INT8``, ``UINT8`` ...); no zero point means UINT8 (the ONNX
    default).
    """
    import onnx

    inits = {i.name: i.data_type for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            zp = node.input[2] if len(node.input) > 2 else ""
            out.append(onnx.TensorProto.DataType.Name(inits[zp]) if zp in inits else ("UINT8" if not zp else "unknown"))
    return out


def to_signed_int8(model: Any, source: object = "model") -> int:
    """Re-encode every symmetric UINT8 Q/DQ of ``model`` (in place) as signed INT8; returns how many nodes changed.

    Raises :class:`CxrError` for what cannot be re-encoded exactly as described in the module
    docstring: a non-zero UINT8 zero point (asymmetric), a zero point or scale that is not an
    initializer, or a scale shared with an INT8 quantizer.
    """
    from onnx import TensorProto, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    unsigned: list[Any] = []
    signed_scales: set[str] = set()
    nodes = [n for n in model.graph.node if n.op_type in QDQ_OPS]
    for node in nodes:
        if len(node.input) < 3 or not node.input[2]:
            raise CxrError(
                f"{source}: {node.op_type} {node.name!r} has no zero point (UINT8 by default); cannot make it INT8"
            )
        zp, scale = inits.get(node.input[2]), inits.get(node.input[1])
        if zp is None or scale is None:
            raise CxrError(
                f"{source}: {node.op_type} {node.name!r} takes its scale or zero point from a node, not a constant"
            )
        if zp.data_type == TensorProto.UINT8:
            if np.any(numpy_helper.to_array(zp) != 0):
                raise CxrError(
                    f"{source}: {node.op_type} {node.name!r} is asymmetric (non-zero zero point); "
                    "TensorRT needs symmetric Q/DQ"
                )
            unsigned.append(node)
        elif zp.data_type == TensorProto.INT8:
            signed_scales.add(scale.name)
    changed_zp: set[str] = set()
    changed_scale: set[str] = set()
    for node in unsigned:
        scale_name, zp_name = node.input[1], node.input[2]
        if scale_name in signed_scales:
            raise CxrError(
                f"{source}: scale {scale_name!r} is shared by UINT8 and INT8 quantizers; cannot re-encode it"
            )
        if zp_name not in changed_zp:
            inits[zp_name].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(inits[zp_name]).astype(np.int8), zp_name)
            )
            changed_zp.add(zp_name)
        if scale_name not in changed_scale:
            s = numpy_helper.to_array(inits[scale_name])
            inits[scale_name].CopyFrom(
                numpy_helper.from_array((s.astype(np.float64) * 255 / 127).astype(s.dtype), scale_name)
            )
            changed_scale.add(scale_name)
    quantized = {n.output[0] for n in unsigned if n.op_type == "QuantizeLinear"}
    for info in [*model.graph.value_info, *model.graph.output]:  # the declared types of the quantized tensors
        if info.name in quantized and info.type.tensor_type.elem_type == TensorProto.UINT8:
            info.type.tensor_type.elem_type = TensorProto.INT8
    return len(unsigned)
