"""Pass: find the weights that can be pruned, and the axis each must be pruned along."""

from __future__ import annotations

import re

import onnx_ir as ir

from ..weights import (
    META_KEY,
    PRUNABLE_DTYPES,
    Status,
    WeightRecord,
    WeightUse,
    is_shape_only_use,
    slot_axis,
)
from .base import InPlacePass, PassResult

__all__ = ["FindWeights"]


class FindWeights(InPlacePass):
    """Attach a :class:`WeightRecord` to every initializer used as a MatMul/Gemm weight.

    A record ends up ``candidate`` (to be pruned along ``record.axis``) or
    ``skipped`` with a one-line reason: excluded by name, not a float type, an
    axis length that is not a multiple of 4, a graph input that can be
    overridden, a graph output, consumers needing different axes, or a use that
    would see its values change.  The model itself is not changed.

    Args:
        exclude: Regular expressions; a weight whose name, or the name of a node
            using it, matches one (``re.search``) is skipped.
    """

    def __init__(self, exclude: list[str] | tuple[str, ...] = ()) -> None:
        self.exclude = [re.compile(pattern) for pattern in exclude]
        self._patterns = list(exclude)

    def call(self, model: ir.Model) -> PassResult:
        records = []
        for graph in model.graphs():
            for value in graph.initializers.values():
                record = self._examine(value, graph)
                if record is not None:
                    value.meta[META_KEY] = record
                    records.append(record)
                else:
                    value.meta.pop(META_KEY, None)
        return PassResult(model, modified=False, weights=records)

    def _examine(self, value: ir.Value, graph: ir.Graph) -> WeightRecord | None:
        tensor = value.const_value
        if tensor is None:
            return None
        rank = len(tensor.shape)
        uses = []
        other_uses = []
        problems = []
        for node, index in value.uses():
            axis, problem = slot_axis(node, index, rank)
            if axis is None and problem:
                problems.append(problem)
            if axis is None and not problem:
                if not is_shape_only_use(node):
                    other_uses.append((node, index))
                continue
            uses.append(WeightUse(node.name or "", node.op_type, index, axis))
        if not uses and not problems:
            return None  # not a weight: a bias, a shape, a table
        record = WeightRecord(
            name=value.name or "",
            value=value,
            graph=graph.name or "",
            shape=tuple(int(d) for d in tensor.shape),
            dtype=tensor.dtype.name,
            uses=uses,
        )
        axes = sorted({use.axis for use in uses})
        if len(axes) == 1:
            record.axis = axes[0]
        record.status = Status.CANDIDATE
        if problems:
            record.skip(problems[0])
        elif len(axes) > 1:
            detail = ", ".join(f"{u.op_type} '{u.node}' axis {u.axis}" for u in uses)
            record.skip(f"its consumers need different axes ({detail})")
        elif other_uses:
            node, index = other_uses[0]
            record.skip(f"also read by {node.op_type} '{node.name}' (input {index}), whose result pruning would change")
        elif value.is_graph_input():
            record.skip("is also a graph input, so a caller can override it at run time")
        elif value.is_graph_output():
            record.skip("is also a graph output; pruning would change that output")
        elif tensor.dtype not in PRUNABLE_DTYPES:
            record.skip(f"dtype {tensor.dtype.name} is not a float type (integer and quantized weights are left alone)")
        elif record.shape[record.axis] % 4:
            record.skip(f"reduction axis {record.axis} has length {record.shape[record.axis]}, not a multiple of 4")
        else:
            pattern = self._excluded_by(record)
            if pattern is not None:
                record.skip(f"excluded by --exclude '{pattern}'")
        return record

    def _excluded_by(self, record: WeightRecord) -> str | None:
        names = [record.name] + [use.node for use in record.uses]
        for regex, pattern in zip(self.exclude, self._patterns, strict=False):
            if any(regex.search(name) for name in names):
                return pattern
        return None
