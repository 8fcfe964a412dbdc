"""``--quantize``: store each float weight about to be pruned as int8 or FP8 behind ``DequantizeLinear``.

The form TensorRT's explicit quantization reads for weights (and ModelOpt's ONNX
quantizer writes): the stored tensor in the low type, per output channel, symmetric
(zero point 0), a ``DequantizeLinear`` feeding the MatMul/Gemm/Conv directly.  The
scale of each channel is its dense weights' largest magnitude over the type's
largest value (:func:`~sparse24_onnx.core.quantized.symmetric_grid`).  Once stored
so, the weights are found again as quantized weights and pruned through their grid:
SparseGPT and ADMM then choose and round the kept weights jointly (each column
rounded as the sweep freezes it, its rounding error spread over the columns still to
come), which rounding after pruning cannot do.

The scales leave room above the dense weights for the updates of methods that change the
kept weights (:data:`UPDATE_HEADROOM`): fitted to the dense weights alone, the grid
saturates the kept weights that grew, which costs more than the coarser step.

A weight that cannot take this form stays float (and is still pruned), with the
reason: a tensor in a subgraph or function, one reaching its product
through other ops (a cast, a transpose: the dequantization must feed the product),
one read by other nodes too, or of a rank the per-channel form does not cover.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from ..core.quantized import symmetric_grid
from .base import NeedsWeights, PassResult
from .naming import graph_names, unique_name
from .weights import META_KEY, ConstantNodeSource, InitializerSource, Status, WeightRecord

__all__ = ["LOW_TYPES", "UPDATE_HEADROOM", "QuantizeWeights"]

#: The float types ``--quantize`` stores in a low type (the scales keep the weight's own float type, so
#: that ``DequantizeLinear`` gives the product what it read before).
_FLOATS = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
#: ``--quantize`` kinds and the types they store (ONNX's and NumPy's, the latter through ml_dtypes).
LOW_TYPES = {"int8": ir.DataType.INT8, "fp8": ir.DataType.FLOAT8E4M3FN}
#: Headroom of the scales above the dense channel's largest weight, for methods that update the kept weights
#: (SparseGPT, ADMM): their updates make kept weights grow past the dense maximum, and a grid fitted to the
#: dense weights saturates them.  Measured (``python benchmarks/bench_quantized.py --types '' --headroom
#: 1,1.3,1.6,2,2.5``, held-out relative L2 of ``--quantize int8``, khmersm / captcha CRNN): 1.0: 0.0580 /
#: 0.2370, 1.3: 0.0420 / 0.2090, 1.6: 0.0397 / 0.2145, 2.0: 0.0380 / 0.2110, 2.5: 0.0402 / 0.2095; float
#: pruned: 0.0387 / 0.2078.
UPDATE_HEADROOM = 2.0


class QuantizeWeights(NeedsWeights):
    """Rewrite every float candidate weight to the low type behind a per-channel ``DequantizeLinear``.

    After the pass, :attr:`quantized` maps each rewritten weight to what the report says
    of it, :attr:`left_float` each weight left float to why; the model's weight records
    are stale (the caller finds the weights again).
    """

    def __init__(self, kind: str, headroom: float = 1.0) -> None:
        if kind not in LOW_TYPES:
            raise ValueError(f"unknown quantization type {kind!r}")
        self.kind = kind
        self.headroom = headroom
        self.quantized: dict[str, dict[str, object]] = {}
        self.left_float: dict[str, str] = {}

    def call(self, model: ir.Model) -> PassResult:
        records: list[WeightRecord] = model.meta[META_KEY]
        names = graph_names(model.graph)
        changed = []
        for record in records:
            if record.status != Status.CANDIDATE or record.quantization is not None:
                continue
            why = self._why_float(model, record)
            if why:
                self.left_float[record.name] = why
                continue
            self._rewrite(model, record, names)
            changed.append(record)
        return PassResult(model, modified=bool(changed), weights=changed)

    def _why_float(self, model: ir.Model, record: WeightRecord) -> str:
        """Why the weight cannot take the per-channel ``DequantizeLinear`` form (empty when it can)."""
        source = record.source
        if isinstance(source, InitializerSource):
            inside = source.value.graph is model.graph
        else:
            inside = isinstance(source, ConstantNodeSource) and source.node.graph is model.graph
        if not inside:
            return "held in a subgraph or a function (the rewrite covers the main graph)"
        value = source.value
        dtype = source.tensor.dtype
        if dtype not in _FLOATS:
            return f"stored as {getattr(dtype, 'name', 'an unknown type')}, not float32/float16/bfloat16"
        through = sorted({op for use in record.uses for op in use.via})
        if through:
            return f"reaches its product through {', '.join(through)}: DequantizeLinear must feed it directly"
        axes = {use.out_axis for use in record.uses}
        if len(axes) != 1 or None in axes:
            return "its uses disagree on the output channel axis"
        rank = len(record.shape)
        if not (rank == 2 or (rank >= 3 and {use.op_type for use in record.uses} == {"Conv"})):
            return f"a rank-{rank} weight (per-channel scales cover 2-D MatMul/Gemm and Conv weights)"
        readers = {id(use.ref) for use in record.uses}
        if any(id(node) not in readers for node, _ in value.uses()) or value.is_graph_output():
            return "also read by other nodes (or a graph output), which would see the low type"
        return ""

    def _rewrite(self, model: ir.Model, record: WeightRecord, names: set[str]) -> None:
        source = record.source
        value = source.value
        weights = source.tensor.numpy()
        float_type = source.tensor.dtype
        out_axis = record.uses[0].out_axis % weights.ndim
        grid = symmetric_grid(weights, out_axis, LOW_TYPES[self.kind].numpy(), self.headroom)
        stored = grid.quantize(weights)
        rounded = grid.dequantize(stored)
        norm = float(np.linalg.norm(weights.astype(np.float64)))
        error = float(np.linalg.norm(rounded.astype(np.float64) - weights)) / norm if norm else 0.0
        source.replace(ir.tensor(stored, name=value.name))
        value.dtype = LOW_TYPES[self.kind]
        scale = _initializer(model, names, f"{value.name}_scale", grid.scale.reshape(-1).astype(float_type.numpy()))
        zero = _initializer(model, names, f"{value.name}_zero_point", grid.zero_point.reshape(-1))
        node = ir.node("DequantizeLinear", [value, scale, zero], attributes={"axis": out_axis}, num_outputs=1)
        node.name = unique_name(f"{value.name}_dequantize", names)
        node.outputs[0].name = unique_name(f"{value.name}_dequantized", names)
        node.outputs[0].dtype = float_type
        node.outputs[0].shape = ir.Shape(list(weights.shape))
        if isinstance(source, ConstantNodeSource):
            model.graph.insert_after(source.node, node)
        else:
            model.graph.insert_before(model.graph.node(0), node)
        for use in record.uses:
            use.ref.replace_input_with(use.input_index, node.outputs[0])
        self.quantized[record.name] = {
            "type": LOW_TYPES[self.kind].name,
            "scale_source": "max-abs of each dense output channel"
            + (f", times {self.headroom:g} (headroom for the kept weights' updates)" if self.headroom != 1 else ""),
            "rounding_error": error,
        }


def _initializer(model: ir.Model, names: set[str], name: str, array: np.ndarray) -> ir.Value:
    name = unique_name(name, names)
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    value.shape = ir.Shape(list(array.shape))
    value.dtype = value.const_value.dtype
    model.graph.register_initializer(value)
    return value
