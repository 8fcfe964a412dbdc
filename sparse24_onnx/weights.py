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
============  =====  ==========================  =========================

When both operands of a MatMul or Gemm are constant, B is the weight and A is
data.  A tensor counts as a candidate when at least one of its uses is such a
slot; it is then pruned only if every use agrees on the axis and no use would
see its values change for another reason.

The per-tensor :class:`WeightRecord` is what the passes share: the finding pass
attaches one to each candidate's :class:`onnx_ir.Value` (in ``value.meta``),
later passes read and update it, and reports are built from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx_ir as ir

from .core import PruneMetrics

__all__ = [
    "PRUNABLE_DTYPES",
    "Status",
    "WeightRecord",
    "WeightUse",
    "slot_axis",
    "weight_records",
]

#: Element types pruned; others (integer, quantized, float8) are skipped.
PRUNABLE_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})

#: Key of the record in ``ir.Value.meta`` (not serialised).
META_KEY = "sparse24.record"

#: Ops that read only the shape of a tensor, so pruning its values is harmless.
_SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})


class Status:
    """Status strings of a :class:`WeightRecord`."""

    CANDIDATE = "candidate"
    PRUNED = "pruned"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class WeightUse:
    """One use of a weight by a node: which op, which input, which axis it needs."""

    node: str
    op_type: str
    input_index: int
    axis: int | None


@dataclass
class WeightRecord:
    """What the pipeline knows and decided about one weight tensor.

    Attributes:
        name: Tensor (initializer) name.
        value: The IR value holding the tensor; ``value.const_value`` is the data.
        graph: Name of the graph the initializer belongs to.
        shape: Dense shape.
        dtype: ONNX element type name (``FLOAT``, ``FLOAT16`` ...).
        uses: Every node that reads the tensor.
        axis: The axis the groups of 4 run along, when one was found.
        status: ``candidate``, ``pruned`` or ``skipped``.
        reason: Why it was skipped (empty otherwise).
        metrics: Pruning quality, once pruned.
    """

    name: str
    value: ir.Value
    graph: str
    shape: tuple[int, ...]
    dtype: str
    uses: list[WeightUse] = field(default_factory=list)
    axis: int | None = None
    status: str = Status.CANDIDATE
    reason: str = ""
    metrics: PruneMetrics | None = None

    def skip(self, reason: str) -> None:
        """Mark the weight as not to be pruned, for ``reason`` (one line)."""
        self.status = Status.SKIPPED
        self.reason = reason

    @property
    def op_types(self) -> str:
        """The consuming op types, e.g. ``MatMul`` or ``Gemm+MatMul``."""
        return "+".join(sorted({use.op_type for use in self.uses}))


def _is_constant(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and not value.is_graph_input()


def slot_axis(node: ir.Node, input_index: int, rank: int) -> tuple[int | None, str]:
    """Axis along which input ``input_index`` of ``node`` must be 2:4, or why it has none.

    Returns:
        ``(axis, "")`` for a weight slot, ``(None, reason)`` otherwise.  The
        reason is empty when the input is simply not a weight slot (a bias, an
        unrelated op).
    """
    if node.domain not in ("", "ai.onnx"):
        return None, ""
    inputs = node.inputs
    other_constant = input_index == 0 and len(inputs) > 1 and _is_constant(inputs[1])
    if node.op_type == "MatMul" and input_index in (0, 1):
        if input_index == 0 and other_constant:
            return None, ""
        if rank < 2:
            return None, f"{rank}-D MatMul operand is a vector, not a weight matrix"
        return (rank - 2 if input_index == 1 else rank - 1), ""
    if node.op_type == "Gemm" and input_index in (0, 1):
        if input_index == 0 and other_constant:
            return None, ""
        if rank != 2:
            return None, f"Gemm operand has rank {rank}, expected 2"
        if input_index == 0:
            return (0 if node.attributes.get_int("transA", 0) else 1), ""
        return (1 if node.attributes.get_int("transB", 0) else 0), ""
    return None, ""


def is_shape_only_use(node: ir.Node) -> bool:
    """True for uses that read only the tensor's shape (``Shape``, ``Size``)."""
    return node.domain in ("", "ai.onnx") and node.op_type in _SHAPE_ONLY_OPS


def weight_records(model: ir.Model) -> Iterator[WeightRecord]:
    """The records attached by the finding pass, in graph and initializer order."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            record = value.meta.get(META_KEY)
            if record is not None:
                yield record
