"""The operator rules, written once: which input of MatMul/Gemm/Conv is the weight and which the data,
along which axes, and which inputs of a layer carry its output channels.

Used by the tracing (which slot a weight reaches, and its reduction axis), the calibration capture
(which activation to read, and how its rows run) and the channel permutation (where a chain of two
layers ends and which tensors reorder with the producer's output channels).

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
"""

from __future__ import annotations

import onnx_ir as ir

__all__ = [
    "MAX_DEPTH",
    "conv_problem",
    "data_operand",
    "is_constant",
    "is_default",
    "output_channel_operands",
    "slot_axis",
]

DEFAULT_DOMAINS = ("", "ai.onnx")
#: How many ops deep a weight's uses (or a constant's producers) are followed.
MAX_DEPTH = 16


def is_default(node: ir.Node) -> bool:
    """The node is a standard ONNX operator (default domain)."""
    return node.domain in DEFAULT_DOMAINS


def is_constant(value: ir.Value | None, seen: dict[int, bool] | None = None, depth: int = 0) -> bool:
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
    if producer is None or depth > 4 * MAX_DEPTH:
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
        and all(i is None or is_constant(i, seen, depth + 1) for i in producer.inputs)
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
    if not is_default(node) or input_index not in (0, 1):
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
    if input_index == 0 and len(inputs) > 1 and is_constant(inputs[1]):
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


def data_operand(node: ir.Node, index: int) -> tuple[ir.Value | None, str] | None:
    """The activation that meets a weight at input ``index`` of ``node``, and how its rows of K features run.

    Layouts: ``last`` (``X @ W``, Gemm: K is the last axis), ``second_last`` (``W @ X``: K is the second to
    last), ``first`` (Gemm with ``transA=1``: K is the first axis), ``channels`` (Conv: K is axis 1, with
    the kernel positions, see the calibration's im2col).  None when the input is no weight slot.
    """
    if not is_default(node):
        return None
    if node.op_type == "MatMul" and index in (0, 1) and len(node.inputs) == 2:
        return (node.inputs[0], "last") if index == 1 else (node.inputs[1], "second_last")
    if node.op_type == "Gemm" and index == 1:
        return node.inputs[0], ("first" if node.attributes.get_int("transA", 0) else "last")
    if node.op_type == "Conv" and index == 1:
        return node.inputs[0], "channels"
    return None


def output_channel_operands(node: ir.Node) -> list[tuple[ir.Value, int]] | None:
    """A layer's inputs that carry its output channels, with the axis (``-1``: last); None when it is no
    layer whose output channels can be reordered (MatMul with a second operand, Gemm without ``transA``,
    ungrouped Conv)."""
    if not is_default(node) or len(node.outputs) != 1:
        return None
    inputs = node.inputs
    if node.op_type == "MatMul" and len(inputs) == 2 and inputs[1] is not None:
        return [(inputs[1], 1)]
    if node.op_type == "Gemm" and inputs[1] is not None and not node.attributes.get_int("transA", 0):
        moves = [(inputs[1], 0 if node.attributes.get_int("transB", 0) else 1)]
        if len(inputs) > 2 and inputs[2] is not None:
            moves.append((inputs[2], -1))
        return moves
    if node.op_type == "Conv" and node.attributes.get_int("group", 1) == 1 and inputs[1] is not None:
        moves = [(inputs[1], 0)]
        if len(inputs) > 2 and inputs[2] is not None:
            moves.append((inputs[2], 0))
        return moves
    return None
