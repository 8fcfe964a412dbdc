"""Which constant tensors are prunable weights, and along which axis.

2:4 sparsity must run along the reduction axis K of the product a weight takes
part in, because that is the axis a Sparse Tensor Core reads in groups of 4:

============  =====  ==========================  =========================
op            input  layout                      axis of the groups of 4
============  =====  ==========================  =========================
MatMul        B (1)  ``[..., K, N]``             ``rank - 2``
MatMul        A (0)  ``[..., M, K]``             ``rank - 1``
Gemm          A (0)  ``[M, K]`` / ``[K, M]``     1, or 0 with ``transA=1``
Gemm          B (1)  ``[K, N]`` / ``[N, K]``     0, or 1 with ``transB=1``
Conv          W (1)  ``[M, C/group, k...]``      1 (input channels, per output
                                                 channel and kernel position)
============  =====  ==========================  =========================

When both operands of a MatMul or Gemm are constant, B is the weight and A is
data.  Weights are initializers (of the main graph, of subgraphs) and the
tensors of ``Constant`` nodes (anywhere, model-local functions included).  A
weight's uses are followed through the ops exporters insert on the way:
``Cast``/``CastLike``/``Identity`` keep the axis, ``Transpose`` moves it (the
axis is mapped back through ``perm``), and a call of a model-local function
continues at the function's matching input.  A weight counts when at least one
use reaches a MatMul/Gemm/Conv weight slot; it is pruned only if every use agrees on
the axis and no use would see its values change for another reason.

The per-tensor :class:`WeightRecord` is what the passes share: the finding pass
stores the list in ``model.meta`` (never serialised), later passes read and
update it, and reports are built from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..core import PruneMetrics

__all__ = [
    "PRUNABLE_DTYPES",
    "ConstantNodeSource",
    "InitializerSource",
    "Status",
    "Trace",
    "WeightRecord",
    "WeightUse",
    "all_graphs",
    "conv_problem",
    "data_problem",
    "slot_axis",
    "trace_uses",
    "weight_records",
]

#: Element types pruned; others (integer, quantized, float8) are skipped.
PRUNABLE_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})

#: Key of the record list in ``ir.Model.meta`` (not serialised).
META_KEY = "sparse24.records"

_DEFAULT_DOMAINS = ("", "ai.onnx")
#: Ops that read only the shape of a tensor, so pruning its values is harmless.
_SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
#: Ops whose output element i is a function of input element i alone: a zero pattern passes through.
_AXIS_KEEPING_OPS = frozenset({"Cast", "CastLike", "Identity"})
#: Ops that dequantize an integer weight on its way to a float product.
_DEQUANTIZE_OPS = frozenset({"DequantizeLinear", "Mul", "Div", "Sub"})
#: Integer ops and the input positions that hold their (quantized) weights.
_INTEGER_OPS = {
    "MatMulInteger": (0, 1),
    "ConvInteger": (1,),
    "QLinearMatMul": (0, 3),
    "QLinearConv": (3,),
}
_MAX_DEPTH = 16


class Status:
    """Status strings of a :class:`WeightRecord`."""

    CANDIDATE = "candidate"
    PRUNED = "pruned"
    SKIPPED = "skipped"
    #: ``check``: the weight is 2:4 along its axis.
    SPARSE = "2:4"
    #: ``check``: the weight is not 2:4 along its axis.
    NOT_SPARSE = "not 2:4"


@dataclass(frozen=True)
class WeightUse:
    """One use of a weight by a MatMul/Gemm/Conv weight slot.

    Attributes:
        node: Name of the MatMul/Gemm/Conv node.
        op_type: ``MatMul``, ``Gemm`` or ``Conv``.
        input_index: Which input of the node the weight reaches.
        axis: The axis *of the stored tensor* the groups of 4 must run along.
        via: The ops between the tensor and the node, e.g. ``("Transpose",)``.
        out_axis: The stored tensor's output axis (N, M, or output channels).
    """

    node: str
    op_type: str
    input_index: int
    axis: int
    via: tuple[str, ...] = ()
    out_axis: int | None = None


class InitializerSource:
    """A weight held as a graph initializer."""

    kind = "initializer"

    def __init__(self, value: ir.Value) -> None:
        self.value = value

    @property
    def tensor(self) -> ir.TensorProtocol:
        return self.value.const_value

    def replace(self, tensor: ir.TensorProtocol) -> None:
        self.value.const_value = tensor


class ConstantNodeSource:
    """A weight held in the ``value`` attribute of a ``Constant`` node."""

    kind = "Constant"

    def __init__(self, node: ir.Node) -> None:
        self.node = node
        self.value = node.outputs[0]

    @property
    def tensor(self) -> ir.TensorProtocol:
        return self.node.attributes["value"].value

    def replace(self, tensor: ir.TensorProtocol) -> None:
        old = self.node.attributes["value"]
        self.node.attributes["value"] = ir.AttrTensor("value", tensor, doc_string=old.doc_string)


@dataclass
class WeightRecord:
    """What the pipeline knows and decided about one weight tensor.

    Attributes:
        name: Tensor name (the initializer's, or the Constant node's output).
        source: Where the tensor lives; ``source.tensor`` reads it, ``source.replace`` swaps it
            (None for a weight already stored compressed, as ``check`` finds them).
        graph: The graph holding it: the main graph's name, a subgraph's name, or
            ``function <domain>.<name>``.
        shape: Dense shape.
        dtype: ONNX element type name (``FLOAT``, ``FLOAT16`` ...).
        uses: Every MatMul/Gemm/Conv weight slot it reaches.
        axis: The axis the groups of 4 run along, when the uses agree on one.
        status: ``candidate``, ``pruned`` or ``skipped``.
        reason: Why it was skipped (empty otherwise).
        metrics: Pruning quality, once pruned.
        deliberate: Left dense on the user's request (``--exclude``), not for a
            technical reason; recorded in the provenance so ``check`` accepts it.
        storage: How a pruned weight is stored: ``dense`` or ``compressed``.
        storage_note: Why a pruned weight stayed dense under ``--format compressed``.
        compressed: The entry written for it in the compressed format, if any.
        permutation: With ``--permute``: the producer layer and the share of
            ``|w|`` 2:4 keeps before and after the channel permutation.
        calibration: With a calibration-aware method: the method used for this
            weight, the calibration rows seen, and the layer's own output error
            ``||XW' - XW|| / ||XW||`` on the calibration data.
    """

    name: str
    source: InitializerSource | ConstantNodeSource | None
    graph: str
    shape: tuple[int, ...]
    dtype: str
    uses: list[WeightUse] = field(default_factory=list)
    axis: int | None = None
    status: str = Status.CANDIDATE
    reason: str = ""
    metrics: PruneMetrics | None = None
    deliberate: bool = False
    storage: str = "dense"
    storage_note: str = ""
    compressed: object | None = None
    permutation: dict | None = None
    calibration: dict | None = None

    def skip(self, reason: str, *, deliberate: bool = False) -> None:
        """Mark the weight as not to be pruned, for ``reason`` (one line)."""
        self.status = Status.SKIPPED
        self.reason = reason
        self.deliberate = deliberate

    @property
    def op_types(self) -> str:
        """The consuming op types, e.g. ``MatMul`` or ``Gemm+MatMul``."""
        return "+".join(sorted({use.op_type for use in self.uses})) or "-"


def _is_default(node: ir.Node) -> bool:
    return node.domain in _DEFAULT_DOMAINS


def _is_constant(value: ir.Value | None, seen: dict[int, bool] | None = None, depth: int = 0) -> bool:
    """True for initializers, Constant outputs, and values computed from constants only.

    The last case covers a weight stored in the compressed format, whose dense
    form is the output of its decompression subgraph.  Nodes with subgraphs
    (If, Loop, Scan) are not looked into.
    """
    if value is None or value.is_graph_input():
        return False
    if value.const_value is not None:
        return True
    producer = value.producer()
    if producer is None or depth > 4 * _MAX_DEPTH:
        return False
    if producer.op_type == "Constant":
        return True
    seen = {} if seen is None else seen
    if id(producer) in seen:
        return seen[id(producer)]
    constant = (
        bool(producer.inputs)
        and not any(
            attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in producer.attributes.values()
        )
        and all(i is None or _is_constant(i, seen, depth + 1) for i in producer.inputs)
    )
    seen[id(producer)] = constant
    return constant


def slot_axis(node: ir.Node, input_index: int, rank: int) -> tuple[tuple[int, int] | None, str]:
    """Axes of input ``input_index`` of ``node`` as a weight: (reduction, output), or why it has none.

    The reduction axis is the one the groups of 4 run along (K of a product, the
    input channels of a convolution); the output axis is the one Sparse Tensor
    Core tiles also need a multiple of 8 along (N, M, or the output channels).

    Returns:
        ``((axis, out_axis), "")`` for a weight slot, ``(None, reason)`` for a
        weight slot that cannot be pruned, ``(None, "")`` when the input is no
        weight slot at all (a bias, data, an unrelated op).
    """
    if not _is_default(node) or input_index not in (0, 1):
        return None, ""
    if node.op_type == "ConvTranspose" and input_index == 1:
        return None, "ConvTranspose: TensorRT has no sparse kernels for deconvolution"
    if node.op_type == "Conv":
        if input_index != 1:
            return None, ""
        if rank < 3:
            return None, f"Conv weight has rank {rank}, expected 3 or more"
        return (1, 0), ""
    if node.op_type not in ("MatMul", "Gemm"):
        return None, ""
    inputs = node.inputs
    if input_index == 0 and len(inputs) > 1 and _is_constant(inputs[1]):
        return None, ""  # both operands constant: B is the weight, A is data
    if node.op_type == "MatMul":
        if rank < 2:
            return None, f"{rank}-D MatMul operand is a vector, not a weight matrix"
        return ((rank - 2, rank - 1) if input_index == 1 else (rank - 1, rank - 2)), ""
    if rank != 2:
        return None, f"Gemm operand has rank {rank}, expected 2"
    if input_index == 0:
        return ((0, 1) if node.attributes.get_int("transA", 0) else (1, 0)), ""
    return ((1, 0) if node.attributes.get_int("transB", 0) else (0, 1)), ""


def conv_problem(node: ir.Node, shape: tuple[int, ...]) -> str:
    """Why a Conv weight cannot be 2:4 (depthwise), or an empty string."""
    group = node.attributes.get_int("group", 1)
    if group > 1 and len(shape) > 1 and shape[1] == 1:
        return f"depthwise convolution (group={group}, one input channel per group): no channels to group by 4"
    return ""


@dataclass
class Trace:
    """Where a tensor's values go: the weight slots, and every other kind of use.

    Attributes:
        uses: MatMul/Gemm/Conv weight slots reached, with the axis in the tensor's own axes.
        problems: Weight slots reached that cannot be pruned (a 1-D operand ...).
        others: Uses that would see changed values (another op, a graph output).
        quantized: Descriptions of integer ops and dequantizing paths reached.
    """

    uses: list[WeightUse] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    quantized: list[str] = field(default_factory=list)


def trace_uses(
    value: ir.Value,
    shape: tuple[int, ...],
    functions: dict[tuple[str, str, str], ir.Function],
    *,
    integer: bool = False,
) -> Trace:
    """Follow ``value`` to the ops that read it (see the module docstring).

    Args:
        value: The tensor's IR value.
        shape: The tensor's shape.
        functions: The model's local functions, by ``(domain, name, overload)``.
        integer: The tensor holds integers; dequantizing ops are then followed
            so that a quantized weight is recognised as one.
    """
    trace = Trace()
    _trace(value, list(range(len(shape))), (), functions, integer, trace, 0, tuple(shape))
    return trace


def _trace(value, mapping, via, functions, integer, trace, depth, shape) -> None:
    if value.is_graph_output():
        graph = value.graph.name if value.graph is not None else ""
        trace.others.append(f"is also output '{value.name}' of graph '{graph}', which pruning would change")
    if depth > _MAX_DEPTH:
        trace.others.append(f"is used more than {_MAX_DEPTH} ops deep (behind '{value.name}'); not followed")
        return
    for node, index in value.uses():
        label = f"{node.op_type} '{node.name or ''}'"
        if _is_default(node) and node.op_type in _INTEGER_OPS:
            if index in _INTEGER_OPS[node.op_type]:
                trace.quantized.append(f"input of the integer op {label}")
            else:
                trace.others.append(_other(label, index))
            continue
        if _is_default(node) and node.op_type in _AXIS_KEEPING_OPS and index == 0:
            _trace(node.outputs[0], mapping, (*via, node.op_type), functions, integer, trace, depth + 1, shape)
            continue
        if _is_default(node) and node.op_type == "Transpose":
            perm = node.attributes.get_ints("perm", None) or list(range(len(mapping)))[::-1]
            moved = [mapping[p] for p in perm]
            _trace(node.outputs[0], moved, (*via, "Transpose"), functions, integer, trace, depth + 1, shape)
            continue
        if integer and _is_default(node) and node.op_type in _DEQUANTIZE_OPS:
            quantized = Trace()
            _trace(node.outputs[0], mapping, (*via, node.op_type), functions, False, quantized, depth + 1, shape)
            if quantized.uses or quantized.quantized:
                trace.quantized.append(f"dequantized by {label}")
            else:
                trace.others.append(_other(label, index))
            continue
        function = functions.get((node.domain, node.op_type, node.overload or ""))
        if function is not None and index < len(function.inputs):
            step = f"function {node.domain}.{node.op_type}"
            _trace(function.inputs[index], mapping, (*via, step), functions, integer, trace, depth + 1, shape)
            continue
        axes, problem = slot_axis(node, index, len(mapping))
        if axes is not None and node.op_type == "Conv":
            problem = conv_problem(node, tuple(shape[m] for m in mapping))
            axes = None if problem else axes
        if axes is not None:
            axis, out_axis = axes
            trace.uses.append(WeightUse(node.name or "", node.op_type, index, mapping[axis], via, mapping[out_axis]))
        elif problem:
            trace.problems.append(problem)
        elif not (_is_default(node) and node.op_type in _SHAPE_ONLY_OPS):
            trace.others.append(_other(label, index))


def _other(label: str, index: int) -> str:
    return f"is also read by {label} (input {index}), whose result pruning would change"


def data_problem(weights: np.ndarray) -> str | None:
    """Why these values cannot be pruned (NaN or Inf), or None."""
    is_float = weights.dtype.kind == "f" or weights.dtype.name == "bfloat16"
    if is_float and not np.isfinite(weights).all():
        return "contains NaN or Inf"
    return None


def all_graphs(model: ir.Model) -> Iterator[tuple[str, ir.Graph | ir.Function]]:
    """Every graph of the model with a label: the main graph, subgraphs, local functions."""
    for graph in model.graphs():
        yield graph.name or "", graph
    for function in model.functions.values():
        label = f"function {function.domain}.{function.name}"
        yield label, function
        for subgraph in function.subgraphs():
            yield f"{label}/{subgraph.name or ''}", subgraph


def weight_records(model: ir.Model) -> list[WeightRecord]:
    """The records attached by the finding pass, in graph order (empty before it ran)."""
    return model.meta.get(META_KEY, [])
