"""Which constant tensors are prunable weights, and along which axis.

2:4 sparsity must run along the reduction axis K of the product a weight takes
part in, because that is the axis a Sparse Tensor Core reads in groups of 4 (the
rules per op: :mod:`~sparse24_onnx.passes.op_rules`).

When both operands of a MatMul or Gemm are constant, B is the weight and A is
data.  Weights are initializers (of the main graph, of subgraphs) and the
tensors of ``Constant`` nodes (anywhere, model-local functions included).  A
weight's uses are followed through the ops exporters insert on the way (casts,
transposes, reshapes, quantization, local functions: see
:mod:`~sparse24_onnx.passes.tracing`).  A weight counts when at least one use
reaches a MatMul/Gemm/Conv weight slot; it is pruned only if every use agrees on
the axis and no use would see its values change for another reason.  Weights
stored quantized (integers, float8) are pruned through their quantization grid.

The per-tensor :class:`WeightRecord` is what the passes share: the finding pass
stores the list in ``model.meta`` (never serialised), later passes read and
update it, and reports are built from it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..core import PruneMetrics
from .op_rules import conv_problem, slot_axis
from .tracing import Dequantization, Trace, WeightUse, trace_uses

__all__ = [
    "NOT_FINITE",
    "PRUNABLE_DTYPES",
    "QUANTIZED_DTYPES",
    "ConstantNodeSource",
    "Declined",
    "Dequantization",
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

#: Float element types pruned as they are.
PRUNABLE_DTYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})
#: Element types of weights stored quantized, pruned through their dequantization (pruned entries become
#: the zero point).
QUANTIZED_DTYPES = frozenset(
    {
        ir.DataType.INT8,
        ir.DataType.UINT8,
        ir.DataType.INT4,
        ir.DataType.UINT4,
        ir.DataType.FLOAT8E4M3FN,
        ir.DataType.FLOAT8E5M2,
    }
)

#: Key of the record list in ``ir.Model.meta`` (not serialised).
META_KEY = "sparse24.records"


class Status(str, enum.Enum):
    """What was decided about a weight (a ``str`` so that reports and tables show the value as it is).

    ``optimize`` moves a weight from ``candidate`` to ``pruned`` or ``skipped``; ``check`` from
    ``candidate`` to ``2:4``, ``not 2:4`` or ``skipped``.
    """

    CANDIDATE = "candidate"
    PRUNED = "pruned"
    SKIPPED = "skipped"
    #: ``check``: the weight is 2:4 along its axis.
    SPARSE = "2:4"
    #: ``check``: the weight is not 2:4 along its axis.
    NOT_SPARSE = "not 2:4"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class Declined(Exception):
    """A step declines one weight, with a one-line reason: the pass that catches it skips the weight
    (or, for storage, keeps it dense) and reports the reason.  Never an error of the run."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
        quantization: How the stored values are dequantized on their way to the
            product (None for a plain float weight); for a weight stored as
            integers or float8 its grid, which pruning works through.
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
    quantization: Dequantization | None = None
    #: Op types of products reached that cannot use the weight (depthwise Conv, MatMulInteger ...).
    declined_ops: tuple[str, ...] = ()

    @property
    def grid(self):
        """The stored tensor's quantization grid, when it is stored quantized (else None)."""
        return self.quantization.grid if self.quantization is not None else None

    def real(self, stored: np.ndarray) -> np.ndarray:
        """The real values the product reads, from the stored tensor (dequantized when stored quantized)."""
        grid = self.grid
        return stored if grid is None else grid.dequantize(stored)

    def skip(self, reason: str, *, deliberate: bool = False) -> None:
        """Mark the weight as not to be pruned, for ``reason`` (one line)."""
        self.status = Status.SKIPPED
        self.reason = reason
        self.deliberate = deliberate

    @property
    def op_types(self) -> str:
        """The consuming op types, e.g. ``MatMul`` or ``Gemm+MatMul``."""
        return "+".join(sorted({use.op_type for use in self.uses} or set(self.declined_ops))) or "-"


#: Why a weight holding NaN or Inf is not pruned.
NOT_FINITE = "contains NaN or Inf"


def data_problem(weights: np.ndarray) -> str | None:
    """Why these values cannot be pruned (NaN or Inf), or None."""
    is_float = weights.dtype.kind == "f" or weights.dtype.name == "bfloat16"
    if is_float and not np.isfinite(weights).all():
        return NOT_FINITE
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
