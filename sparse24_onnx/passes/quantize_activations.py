"""``--quantize``: ``QuantizeLinear -> DequantizeLinear`` on the data input of every product whose weight it
quantized, so that TensorRT runs the product in the low type (explicit quantization).

TensorRT's rules for activations, as this pass writes them: one scale per tensor
(TensorRT takes per-tensor activation scales only), zero point 0 (symmetric), the
pair placed right before the MatMul/Gemm/Conv input (one pair per activation, shared
by the products reading it, as q/k/v share their input).  Products whose weight
stayed float get no pair: TensorRT runs them in their float type.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .base import InPlacePass, PassResult
from .naming import graph_names, unique_name
from .quantize_weights import LOW_TYPES

__all__ = ["ActivationScale", "QuantizeActivations", "data_input_index"]


@dataclass(frozen=True)
class ActivationScale:
    """One activation's quantization: its calibrated range's largest magnitude and the scale from it."""

    amax: float
    scale: float


def data_input_index(node: ir.Node, weight_index: int) -> int | None:
    """The input of ``node`` holding the activation its weight at ``weight_index`` multiplies."""
    if node.op_type == "MatMul" and weight_index in (0, 1):
        return 1 - weight_index
    if node.op_type in ("Gemm", "Conv") and weight_index == 1:
        return 0
    return None


class QuantizeActivations(InPlacePass):
    """Insert the Q/DQ pairs.

    Args:
        products: ``(node, data input index)`` of each product to quantize.
        scales: Per activation name, its :class:`ActivationScale`.
        kind: ``int8`` or ``fp8``.
    """

    def __init__(self, products: list[tuple[ir.Node, int]], scales: dict[str, ActivationScale], kind: str) -> None:
        self.products = products
        self.scales = scales
        self.kind = kind
        #: Activation name -> the DequantizeLinear output that replaced it at the products.
        self.inserted: dict[str, str] = {}

    def call(self, model: ir.Model) -> PassResult:
        graph = model.graph
        names = graph_names(graph)
        stored = LOW_TYPES[self.kind].numpy()
        done: dict[int, ir.Value] = {}
        for node, index in self.products:
            value = node.inputs[index]
            if value is None or value.name not in self.scales:
                continue
            if id(value) not in done:
                done[id(value)] = self._pair(graph, value, stored, names)
            node.replace_input_with(index, done[id(value)])
        return PassResult(model, modified=bool(done))

    def _pair(self, graph: ir.Graph, value: ir.Value, stored: np.dtype, names: set[str]) -> ir.Value:
        float_type = value.dtype or ir.DataType.FLOAT
        scale = ir.Value(name=unique_name(f"{value.name}_act_scale", names))
        amount = np.array(self.scales[value.name].scale, dtype=float_type.numpy())
        scale.const_value = ir.tensor(amount, name=scale.name)
        scale.dtype, scale.shape = scale.const_value.dtype, ir.Shape([])
        zero = ir.Value(name=unique_name(f"{value.name}_act_zero_point", names))
        zero.const_value = ir.tensor(np.zeros((), dtype=stored), name=zero.name)
        zero.dtype, zero.shape = zero.const_value.dtype, ir.Shape([])
        graph.register_initializer(scale)
        graph.register_initializer(zero)
        quantize = ir.node("QuantizeLinear", [value, scale, zero], num_outputs=1)
        dequantize = ir.node("DequantizeLinear", [quantize.outputs[0], scale, zero], num_outputs=1)
        quantize.name = unique_name(f"{value.name}_quantize", names)
        dequantize.name = unique_name(f"{value.name}_dequantize", names)
        quantize.outputs[0].name = unique_name(f"{value.name}_quantized", names)
        dequantize.outputs[0].name = unique_name(f"{value.name}_dequantized", names)
        quantize.outputs[0].dtype = zero.dtype
        dequantize.outputs[0].dtype = float_type
        for out in (quantize.outputs[0], dequantize.outputs[0]):
            out.shape = value.shape
        producer = value.producer()
        if producer is not None and producer.graph is graph:
            graph.insert_after(producer, [quantize, dequantize])
        else:  # a graph input: first of all
            graph.insert_before(graph.node(0), [quantize, dequantize])
        self.inserted[value.name] = dequantize.outputs[0].name
        return dequantize.outputs[0]
