"""Does a QDQ model follow TensorRT's documented rules for explicit quantization?

What TensorRT's explicit quantization (``QuantizeLinear``/``DequantizeLinear`` in
ONNX) accepts and what it needs to run a product in the low type, checked on the
graph without TensorRT:

* quantized types TensorRT has: int8 and FP8 E4M3 (uint8 is not one of them);
* zero points of 0: TensorRT's quantization is symmetric;
* scales: one per tensor, or one per channel along the quantization axis (a 1-D scale
  as long as that axis); activations (a ``QuantizeLinear`` of a computed tensor) per
  tensor only; no blocked scales for int8/FP8;
* a ``QuantizeLinear`` of an activation is read only by ``DequantizeLinear``s with its
  own scale and zero point (a Q/DQ pair);
* a weight's ``DequantizeLinear`` (of a constant) feeds its MatMul/Gemm/Conv directly,
  with per-channel scales along the product's output channels (Conv and Gemm
  ``transB=1``: axis 0; MatMul and Gemm ``transB=0``: axis 1);
* a product with a quantized weight has a quantized data input too (a
  ``DequantizeLinear`` output), or TensorRT runs it in float.

:func:`tensorrt_violations` returns one line per broken rule (empty: the graph follows them).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..passes.op_rules import is_constant
from ..passes.quantize_activations import data_input_index

__all__ = ["tensorrt_violations"]

_TYPES = {ir.DataType.INT8, ir.DataType.FLOAT8E4M3FN}
_PRODUCTS = ("MatMul", "Gemm", "Conv")


def tensorrt_violations(model: ir.Model) -> list[str]:
    """One line per place where ``model``'s Q/DQ nodes break TensorRT's explicit-quantization rules."""
    problems: list[str] = []
    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            problems += _node_rules(node)
        elif node.op_type in _PRODUCTS:
            problems += _product_rules(node)
    return problems


def _array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].value.numpy()
    return None


def _node_rules(node: ir.Node) -> list[str]:
    name = node.name or node.outputs[0].name
    problems = []
    low = node.outputs[0] if node.op_type == "QuantizeLinear" else node.inputs[0]
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    low_type = zero.dtype if zero is not None and zero.dtype is not None else low.dtype
    if low_type is not None and low_type not in _TYPES:
        problems.append(f"{node.op_type} {name}: quantizes to {low_type.name}; TensorRT takes int8 and FP8 E4M3")
    zero_values = _array(zero)
    if zero_values is not None and np.any(zero_values.astype(np.float32) != 0):
        problems.append(f"{node.op_type} {name}: non-zero zero point; TensorRT's quantization is symmetric")
    if node.attributes.get_int("block_size", 0):
        problems.append(f"{node.op_type} {name}: blocked scales; TensorRT takes them for 4-bit types only")
    scale = _array(node.inputs[1])
    if scale is None:
        problems.append(f"{node.op_type} {name}: its scale is computed, not a constant")
        return problems
    data = node.inputs[0]
    activation = node.op_type == "QuantizeLinear" and not is_constant(data)
    if scale.ndim > 1 or (activation and scale.size != 1):
        what = "an activation's scale must be one value" if activation else "a scale is one value or 1-D"
        problems.append(f"{node.op_type} {name}: scale of shape {list(scale.shape)}; {what}")
    elif scale.ndim == 1 and scale.size > 1 and data.shape is not None:
        axis = node.attributes.get_int("axis", 1) % max(len(data.shape), 1)
        size = data.shape[axis] if axis < len(data.shape) else None
        if isinstance(size, int) and size != scale.size:
            problems.append(f"{node.op_type} {name}: {scale.size} scales for axis {axis} of length {size}")
    if activation:
        for reader, _ in node.outputs[0].uses():
            if reader.op_type != "DequantizeLinear" or not _same_constants(node, reader):
                problems.append(
                    f"QuantizeLinear {name}: read by {reader.op_type} {reader.name!r}; TensorRT needs a "
                    "DequantizeLinear with the same scale and zero point right after it"
                )
    if node.op_type == "DequantizeLinear" and is_constant(data):
        problems += _weight_rules(node, name, scale)
    return problems


def _same_constants(quantize: ir.Node, dequantize: ir.Node) -> bool:
    pairs = zip(quantize.inputs[1:3], dequantize.inputs[1:3], strict=False)
    for a, b in pairs:
        x, y = _array(a), _array(b)
        if x is None or y is None or x.shape != y.shape:
            return False
        if not np.array_equal(x.astype(np.float64), y.astype(np.float64)):
            return False
    return len(quantize.inputs) == len(dequantize.inputs)


def _weight_rules(node: ir.Node, name: str, scale: np.ndarray) -> list[str]:
    """A weight's DequantizeLinear: straight into its products, per-channel along their output channels."""
    problems = []
    for reader, index in node.outputs[0].uses():
        if reader.op_type not in _PRODUCTS:
            problems.append(
                f"DequantizeLinear {name}: a weight's dequantization read by {reader.op_type} {reader.name!r}; "
                "TensorRT needs it to feed the MatMul/Gemm/Conv directly"
            )
            continue
        want = _output_axis(reader, index)
        if scale.size > 1 and want is not None:
            got = node.attributes.get_int("axis", 1) % max(len(node.inputs[0].shape or [0, 0]), 1)
            if got != want:
                problems.append(
                    f"DequantizeLinear {name}: per-channel along axis {got}; {reader.op_type} {reader.name!r} "
                    f"reads its output channels along axis {want}"
                )
    return problems


def _output_axis(node: ir.Node, index: int) -> int | None:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if node.attributes.get_int("transB", 0) else 1
    if node.op_type == "MatMul" and index == 1:
        return 1
    return None


def _product_rules(node: ir.Node) -> list[str]:
    """A product whose weight is dequantized needs a dequantized data input too."""
    for index, value in enumerate(node.inputs):
        producer = value.producer() if value is not None else None
        if producer is None or producer.op_type != "DequantizeLinear" or not is_constant(producer.inputs[0]):
            continue
        data = data_input_index(node, index)
        source = node.inputs[data].producer() if data is not None and node.inputs[data] is not None else None
        if source is None or source.op_type != "DequantizeLinear":
            return [
                f"{node.op_type} {node.name!r}: quantized weight, float data input; TensorRT runs it in float "
                "(quantize its input with a Q/DQ pair)"
            ]
    return []
