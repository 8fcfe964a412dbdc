"""Following a constant tensor to the products that read it, through what exporters put on the way.

From a weight's value, every use is followed until it reaches a MatMul/Gemm/Conv
weight slot (a :class:`WeightUse`, with the reduction axis mapped back to the
*stored* tensor's axes), a use that pruning would change (another op, a graph
output), or a step the tracing cannot see through (a *gap*, with its reason: the
weight is then skipped, never guessed at).

What is followed, keeping track of the current shape and of which stored axis
each current axis is:

* ``Cast``, ``CastLike``, ``Identity``: same axes;
* ``Transpose``: axes permuted (``perm``, reversed when absent);
* ``Reshape``, ``Flatten``, ``Unsqueeze``, ``Squeeze`` with constant shapes: an
  axis survives when it keeps its length and its stride (the product of the
  sizes after it); merged or split axes are no stored axis any more;
* quantization: a float weight through ``QuantizeLinear -> [Clip] ->
  DequantizeLinear`` (the fake-quant form of pytorch-quantization, brevitas,
  ModelOpt; QCDQ exports put the ``Clip``), and a stored integer or float8
  weight through ``DequantizeLinear`` or ``Cast -> [Sub zero point] -> Mul/Div
  scale`` (weight-only exports): the scales and zero points are read and laid
  over the stored tensor (:class:`~sparse24_onnx.core.quantized.QuantGrid`);
* a call of a model-local function, continuing at the matching function input.

``MatMulInteger``, ``ConvInteger`` and ``QLinearMatMul/Conv`` (onnxruntime's
dynamic and operator-form CPU quantization) are reported as integer ops: no
Sparse Tensor Core runs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..core.quantized import QuantGrid
from .op_rules import MAX_DEPTH, conv_problem, is_default, slot_axis

__all__ = ["Dequantization", "Trace", "WeightUse", "trace_uses"]

#: Ops that read only the shape of a tensor, so pruning its values is harmless.
_SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
#: Ops whose output element i is a function of input element i alone: a zero pattern passes through.
_AXIS_KEEPING_OPS = frozenset({"Cast", "CastLike", "Identity"})
#: Ops that only rearrange the elements (the tracer maps the axes through them).
_RESHAPING_OPS = frozenset({"Reshape", "Flatten", "Unsqueeze", "Squeeze"})
#: Integer ops and the input positions that hold their (quantized) weights.
_INTEGER_OPS = {
    "MatMulInteger": (0, 1),
    "ConvInteger": (1,),
    "QLinearMatMul": (0, 3),
    "QLinearConv": (3,),
}


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
    #: The node itself (for finding its inputs; names can be empty or repeated).
    ref: ir.Node | None = field(default=None, compare=False, repr=False)


@dataclass
class Dequantization:
    """How a weight's stored values become the real values its product reads.

    Attributes:
        form: ``DequantizeLinear``, ``Cast -> Mul`` (weight-only), or
            ``QuantizeLinear -> DequantizeLinear`` (a float weight fake-quantized).
        node: The dequantizing node (or the quantizing one for the float form).
        grid: The stored tensor's grid (None for the float form: the stored floats
            are the real values).
        scheme: ``per-tensor``, ``per-channel (axis A)`` or ``blocked (axis A, block B)``,
            axes of the stored tensor.
        symmetric: Every zero point is 0 (TensorRT's explicit quantization needs that).
    """

    form: str
    node: str
    grid: QuantGrid | None
    scheme: str
    symmetric: bool
    #: When ``--quantize`` stored the weight so: the type, where the scales came from, and the rounding's
    #: own error (relative L2 of round-to-nearest against the float weight, before any pruning).
    quantized_by: dict[str, object] | None = None

    def as_dict(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "form": self.form,
            "node": self.node,
            "scheme": self.scheme,
            "symmetric": self.symmetric,
        }
        if self.quantized_by is not None:
            entry["quantized_by"] = self.quantized_by
        if not self.symmetric:
            entry["tensorrt"] = TENSORRT_ZERO_POINT
        return entry

    @property
    def short(self) -> str:
        """The form in a few letters, for tables: ``DQ``, ``QDQ``, ``Cast``."""
        return {"DequantizeLinear": "DQ", "QuantizeLinear -> DequantizeLinear": "QDQ"}.get(self.form, "Cast")


#: Why an asymmetric weight will not build in TensorRT (onnxruntime runs it).
TENSORRT_ZERO_POINT = (
    "TensorRT's explicit quantization needs zero points of 0 and will refuse this weight's dequantization; "
    "onnxruntime runs it (pruned entries are its zero point)"
)


@dataclass
class Trace:
    """Where a tensor's values go.

    Attributes:
        uses: MatMul/Gemm/Conv weight slots reached, with the axis in the stored tensor's axes.
        problems: Weight slots reached that cannot be pruned (a 1-D operand ...).
        others: Uses that would see changed values (another op, a graph output).
        integer_ops: Integer ops (MatMulInteger ...) the tensor feeds.
        dequantized: How the stored values are dequantized on the way (one per path).
        gaps: Steps the tracing could not see through, each a reason to skip the weight.
    """

    uses: list[WeightUse] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    integer_ops: list[str] = field(default_factory=list)
    dequantized: list[Dequantization] = field(default_factory=list)
    gaps: list[str] = field(default_factory=list)
    #: Op types of the products reached that cannot use the weight (for tables: depthwise Conv, MatMulInteger).
    declined_ops: list[str] = field(default_factory=list)


def _constant(value: ir.Value | None) -> np.ndarray | None:
    """A copy of the array of a constant value (initializer or Constant node), or None.

    A copy, not a view: the tensor may be memory-mapped from external data, and
    its mapping is released while the array is still in use (scales, zero points).
    """
    if value is None or value.is_graph_input():
        return None
    if value.const_value is not None:
        return np.array(value.const_value.numpy())
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return np.array(producer.attributes["value"].value.numpy())
    return None


@dataclass(frozen=True)
class _Step:
    """Where the tracing stands: the current value, its shape, and the stored axis behind each of its axes."""

    value: ir.Value
    shape: tuple[int, ...]
    mapping: tuple[int | None, ...]
    via: tuple[str, ...]
    #: The values are quantized here (after a QuantizeLinear, or a stored integer/float8 weight).
    quantized: bool
    #: The stored tensor is quantized (integer or float8) and not yet dequantized on this path.
    stored_quantized: bool
    depth: int = 0
    #: A float weight's QuantizeLinear on this path (for the report), if any.
    quantizer: str = ""

    def to(self, value: ir.Value, op: str, **changes) -> _Step:
        fields = {
            "value": value,
            "shape": self.shape,
            "mapping": self.mapping,
            "via": (*self.via, op),
            "quantized": self.quantized,
            "stored_quantized": self.stored_quantized,
            "depth": self.depth + 1,
            "quantizer": self.quantizer,
        }
        fields.update(changes)
        return _Step(**fields)


def trace_uses(
    value: ir.Value,
    shape: tuple[int, ...],
    functions: dict[tuple[str, str, str], ir.Function],
    *,
    stored_dtype: np.dtype | None = None,
) -> Trace:
    """Follow ``value`` to the ops that read it (see the module docstring).

    Args:
        value: The tensor's IR value.
        shape: The stored tensor's shape.
        functions: The model's local functions, by ``(domain, name, overload)``.
        stored_dtype: For a tensor stored quantized (integers or float8), its
            NumPy dtype: its dequantization is then followed and described.
    """
    trace = Trace()
    shape = tuple(int(d) for d in shape)
    quantized = stored_dtype is not None
    start = _Step(value, shape, tuple(range(len(shape))), (), quantized, quantized)
    _Tracer(functions, trace, stored_dtype).follow(start)
    return trace


class _Tracer:
    def __init__(self, functions, trace: Trace, stored_dtype: np.dtype | None) -> None:
        self.functions = functions
        self.trace = trace
        self.stored_dtype = stored_dtype
        #: Zero points read from a ``Sub`` on a weight-only path, by the id of the Sub's output value.
        self.zero_points: dict[int, np.ndarray] = {}

    def gap(self, step: _Step, node: ir.Node, why: str) -> None:
        self.trace.gaps.append(f"its use by {node.op_type} '{node.name or ''}' cannot be followed: {why}")

    def follow(self, step: _Step) -> None:
        value = step.value
        trace = self.trace
        if value.is_graph_output():
            graph = value.graph.name if value.graph is not None else ""
            trace.others.append(f"is also output '{value.name}' of graph '{graph}', which pruning would change")
        if step.depth > MAX_DEPTH:
            trace.others.append(f"is used more than {MAX_DEPTH} ops deep (behind '{value.name}'); not followed")
            return
        for node, index in value.uses():
            self.use(step, node, index)

    def use(self, step: _Step, node: ir.Node, index: int) -> None:
        trace = self.trace
        label = f"{node.op_type} '{node.name or ''}'"
        op = node.op_type if is_default(node) else ""
        if op in _INTEGER_OPS:
            if index in _INTEGER_OPS[op]:
                trace.declined_ops.append(op)
                trace.integer_ops.append(
                    f"input of the integer op {label} (onnxruntime's integer kernels: no Sparse Tensor Core runs it)"
                )
            else:
                trace.others.append(_other(label, index))
            return
        if op in _AXIS_KEEPING_OPS and index == 0:
            self.follow(step.to(node.outputs[0], op))
            return
        if op == "Transpose" and index == 0:
            perm = node.attributes.get_ints("perm", None) or list(range(len(step.shape)))[::-1]
            if sorted(perm) != list(range(len(step.shape))):
                self.gap(step, node, f"perm {list(perm)} does not fit a tensor of rank {len(step.shape)} here")
                return
            shape = tuple(step.shape[p] for p in perm)
            self.follow(step.to(node.outputs[0], op, shape=shape, mapping=tuple(step.mapping[p] for p in perm)))
            return
        if op in _RESHAPING_OPS and index == 0:
            try:
                shape = _reshaped(node, step.shape)
            except _Gap as gap:
                self.gap(step, node, gap.reason)
                return
            self.follow(step.to(node.outputs[0], op, shape=shape, mapping=_surviving_axes(step, shape)))
            return
        if op == "QuantizeLinear" and index == 0 and not step.quantized:
            self.follow(step.to(node.outputs[0], op, quantized=True, quantizer=node.name or ""))
            return
        if op == "Clip" and index == 0 and step.quantized:
            self.follow(step.to(node.outputs[0], op))  # QCDQ: saturation between Q and DQ keeps the zero point
            return
        if op == "DequantizeLinear" and index == 0 and step.quantized:
            self.dequantize_linear(step, node)
            return
        if step.stored_quantized and op in ("Mul", "Div", "Sub"):
            self.weight_only(step, node, index)
            return
        function = self.functions.get((node.domain, node.op_type, node.overload or ""))
        if function is not None and index < len(function.inputs):
            self.follow(step.to(function.inputs[index], f"function {node.domain}.{node.op_type}"))
            return
        self.slot(step, node, index, label)

    def slot(self, step: _Step, node: ir.Node, index: int, label: str) -> None:
        trace = self.trace
        axes, problem = slot_axis(node, index, len(step.shape))
        if axes is not None and (step.quantized or step.stored_quantized):
            trace.gaps.append(f"reaches {label} as raw quantized values (no DequantizeLinear or scale on the way)")
            return
        if axes is not None and node.op_type == "Conv":
            problem = conv_problem(node, step.shape)
            axes = None if problem else axes
        if axes is not None:
            axis, out_axis = axes
            if step.mapping[axis] is None:
                trace.gaps.append(
                    f"the reduction axis of {label} is no axis of the stored tensor (merged or split on the way)"
                )
                return
            trace.uses.append(
                WeightUse(
                    node.name or "", node.op_type, index, step.mapping[axis], step.via, step.mapping[out_axis], node
                )
            )
        elif problem:
            trace.declined_ops.append(node.op_type)
            trace.problems.append(problem)
        elif not (is_default(node) and node.op_type in _SHAPE_ONLY_OPS):
            trace.others.append(_other(label, index))

    # ---------------------------------------------------------------- quantization

    def dequantize_linear(self, step: _Step, node: ir.Node) -> None:
        """``DequantizeLinear`` of the (stored or fake-quantized) weight: describe it, then follow its output."""
        out = step.to(node.outputs[0], "DequantizeLinear", quantized=False, stored_quantized=False)
        if not step.stored_quantized:  # a float weight, fake-quantized on the way
            zero = _constant(node.inputs[2]) if len(node.inputs) > 2 else None
            symmetric = zero is None or not np.any(np.asarray(zero).astype(np.float64))
            self.trace.dequantized.append(
                Dequantization("QuantizeLinear -> DequantizeLinear", step.quantizer, None, "float weight", symmetric)
            )
            self.follow(out)
            return
        permutation = _permutation(step)
        if permutation is None:
            self.gap(step, node, "the stored tensor was reshaped before its DequantizeLinear")
            return
        scale = _constant(node.inputs[1]) if len(node.inputs) > 1 else None
        zero = _constant(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
        if scale is None or (len(node.inputs) > 2 and node.inputs[2] is not None and zero is None):
            self.gap(step, node, "its scale or zero point is not a constant")
            return
        rank = len(step.shape)
        axis = node.attributes.get_int("axis", 1)
        axis = axis + rank if axis < 0 else axis
        block = node.attributes.get_int("block_size", 0)
        try:
            scale_s, zero_s, scheme = _lay_over(scale, zero, step, axis, block, permutation)
        except _Gap as gap:
            self.gap(step, node, gap.reason)
            return
        dtype = np.dtype(self.stored_dtype)
        if zero_s is None:
            zero_s = np.zeros((), dtype=dtype)
        grid = QuantGrid(dtype, scale_s, zero_s.astype(dtype))
        self.trace.dequantized.append(Dequantization("DequantizeLinear", node.name or "", grid, scheme, grid.symmetric))
        self.follow(out)

    def weight_only(self, step: _Step, node: ir.Node, index: int) -> None:
        """``Cast -> [Sub zero point] -> Mul/Div scale`` of a stored integer weight (weight-only exports)."""
        label = f"{node.op_type} '{node.name or ''}'"
        op = node.op_type
        if index != 0 and op in ("Sub", "Div"):
            self.trace.others.append(_other(label, index))
            return
        other = node.inputs[1 - index] if len(node.inputs) == 2 else None
        constant = _constant(other)
        if constant is None:
            self.trace.others.append(_other(label, index))
            return
        permutation = _permutation(step)
        if permutation is None:
            self.gap(step, node, "the stored tensor was reshaped before it was dequantized")
            return
        if constant.ndim > len(step.shape):
            self.gap(step, node, f"its {op} broadcasts the weight from rank {len(step.shape)} to rank {constant.ndim}")
            return
        try:
            np.broadcast_shapes(constant.shape, step.shape)
        except ValueError:
            self.gap(step, node, f"its other input of shape {list(constant.shape)} does not broadcast to it")
            return
        if np.broadcast_shapes(constant.shape, step.shape) != step.shape:
            self.gap(step, node, f"its other input of shape {list(constant.shape)} changes the weight's shape")
            return
        stored = _to_stored(constant.reshape((1,) * (len(step.shape) - constant.ndim) + constant.shape), permutation)
        if op == "Sub":
            # q - zero_point, then the scale: follow on with the zero point known.
            follow = step.to(node.outputs[0], op)
            self.zero_points.setdefault(id(follow.value), stored)
            self.follow(follow)
            return
        zero = self.zero_points.get(id(step.value))
        dtype = np.dtype(self.stored_dtype)
        zero_point = np.zeros((), dtype=dtype) if zero is None else zero
        grid = QuantGrid(dtype, stored.astype(np.float32), np.asarray(zero_point).astype(dtype), divide=op == "Div")
        scheme = _scheme_of(stored)
        form = "Cast -> " + ("Sub -> " if zero is not None else "") + op
        self.trace.dequantized.append(Dequantization(form, node.name or "", grid, scheme, grid.symmetric))
        self.follow(step.to(node.outputs[0], op, stored_quantized=False, quantized=False))


class _Gap(Exception):
    """A step the tracing cannot see through, with the reason (the weight is then skipped, never guessed at)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _other(label: str, index: int) -> str:
    return f"is also read by {label} (input {index}), whose result pruning would change"


def _permutation(step: _Step) -> tuple[int, ...] | None:
    """The stored axis of each current axis when the current tensor is a transpose of the stored one."""
    mapping = step.mapping
    if None in mapping or sorted(mapping) != list(range(len(mapping))):
        return None
    return tuple(int(m) for m in mapping)


def _to_stored(array: np.ndarray, permutation: tuple[int, ...]) -> np.ndarray:
    """An array laid over the current axes, moved onto the stored tensor's axes (same rank)."""
    inverse = np.argsort(permutation)
    return np.transpose(array, inverse)


def _lay_over(scale, zero, step: _Step, axis: int, block: int, permutation):
    """Scale and zero point of a DequantizeLinear, broadcastable to the stored tensor (:class:`_Gap`: why not)."""
    rank = len(step.shape)
    scale = np.asarray(scale)
    zero = None if zero is None else np.asarray(zero)
    if scale.ndim == 0 or (scale.size == 1 and block <= 0):
        return scale.reshape(()), None if zero is None else zero.reshape(()), "per-tensor"
    if not 0 <= axis < rank:
        raise _Gap(f"axis {axis} is out of range for rank {rank}")
    stored_axis = permutation[axis]
    if block > 0:
        if scale.ndim != rank:
            raise _Gap(f"blocked scale of rank {scale.ndim} for a tensor of rank {rank}")

        def expand(array):
            grown = np.repeat(array, block, axis=axis)
            index = [slice(None)] * rank
            index[axis] = slice(0, step.shape[axis])
            return _to_stored(grown[tuple(index)], permutation)

        return expand(scale), None if zero is None else expand(zero), f"blocked (axis {stored_axis}, block {block})"
    if scale.ndim != 1 or scale.size != step.shape[axis]:
        raise _Gap(
            f"per-axis scale of shape {list(scale.shape)} does not match axis {axis} of length {step.shape[axis]}"
        )
    shape = [1] * rank
    shape[stored_axis] = scale.size
    return (
        scale.reshape(shape),
        None if zero is None else zero.reshape(shape),
        f"per-channel (axis {stored_axis})",
    )


def _scheme_of(scale: np.ndarray) -> str:
    """How a scale laid over the stored tensor varies: per-tensor, per-channel (axis A) or per-element."""
    spread = [a for a, n in enumerate(scale.shape) if n > 1]
    if not spread:
        return "per-tensor"
    if len(spread) == 1:
        return f"per-channel (axis {spread[0]})"
    return "per-element"


def _reshaped(node: ir.Node, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of a Reshape/Flatten/Unsqueeze/Squeeze with constant arguments; :class:`_Gap` says why
    it is unknown."""
    op = node.op_type
    rank = len(shape)
    if op == "Flatten":
        axis = node.attributes.get_int("axis", 1)
        axis = axis + rank if axis < 0 else axis
        return (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))
    argument = _constant(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
    if op == "Reshape":
        if argument is None:
            raise _Gap("its target shape is not a constant")
        target = [int(d) for d in argument.reshape(-1)]
        allow_zero = node.attributes.get_int("allowzero", 0)
        out = [shape[i] if d == 0 and not allow_zero and i < rank else d for i, d in enumerate(target)]
        if out.count(-1) > 1:
            raise _Gap("its target shape has more than one -1")
        if -1 in out:
            known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
            total = int(np.prod(shape, dtype=np.int64))
            if known == 0 or total % known:
                raise _Gap(f"target shape {target} does not fit {list(shape)}")
            out[out.index(-1)] = total // known
        if int(np.prod(out, dtype=np.int64)) != int(np.prod(shape, dtype=np.int64)):
            raise _Gap(f"target shape {target} does not fit {list(shape)}")
        return tuple(out)
    axes = argument if argument is not None else node.attributes.get_ints("axes", None)
    if op == "Unsqueeze":
        if axes is None:
            raise _Gap("its axes are not a constant")
        new_rank = rank + len(list(np.reshape(axes, -1)))
        positions = sorted(int(a) + new_rank if int(a) < 0 else int(a) for a in np.reshape(axes, -1))
        out, source = [], iter(shape)
        for i in range(new_rank):
            out.append(1 if i in positions else next(source))
        return tuple(out)
    # Squeeze
    if axes is None:
        if len(node.inputs) > 1 and node.inputs[1] is not None:
            raise _Gap("its axes are not a constant")
        return tuple(d for d in shape if d != 1)
    drop = {int(a) + rank if int(a) < 0 else int(a) for a in np.reshape(axes, -1)}
    return tuple(d for i, d in enumerate(shape) if i not in drop)


def _surviving_axes(step: _Step, shape: tuple[int, ...]) -> tuple[int | None, ...]:
    """For each axis of the reshaped tensor, the stored axis it still is (same length and stride), or None."""
    before = step.shape
    strides = [int(np.prod(before[i + 1 :], dtype=np.int64)) for i in range(len(before))]
    mapping = []
    for j, n in enumerate(shape):
        stride = int(np.prod(shape[j + 1 :], dtype=np.int64))
        match = [i for i in range(len(before)) if before[i] == n and strides[i] == stride and n != 1]
        mapping.append(step.mapping[match[0]] if match else None)
    return tuple(mapping)
