"""Pass: find the weights that can be pruned, and the axis each must be pruned along."""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir

from ..choices import TC_SHAPES
from ..errors import BadInput
from .base import InPlacePass, PassResult
from .weights import (
    META_KEY,
    PRUNABLE_DTYPES,
    QUANTIZED_DTYPES,
    ConstantNodeSource,
    InitializerSource,
    Trace,
    WeightRecord,
    all_graphs,
    trace_uses,
)

__all__ = ["FindWeights"]


class FindWeights(InPlacePass):
    """Record every constant tensor used as a MatMul/Gemm/Conv weight, and what to do with it.

    Looks at the initializers of every graph and subgraph and at ``Constant``
    nodes everywhere (model-local functions included).  Each weight gets a
    :class:`~sparse24_onnx.passes.weights.WeightRecord`, ``candidate`` (to be pruned
    along ``record.axis``) or ``skipped`` with a one-line reason.  The list is
    stored in ``model.meta`` for the passes after this one; the model itself is
    not changed.

    Args:
        exclude: Regular expressions; a weight whose name, or the name of a node
            using it, matches one (``re.search``) is skipped.
        tc_shapes: Which shapes can use Sparse Tensor Cores (see :data:`TC_SHAPES`):
            ``strict`` needs the reduction length to be a multiple of 16 and the
            output length a multiple of 8 (the shapes of Ampere's sparse MMA, as
            apex ASP checks them), ``relaxed`` only the former, ``off`` only the
            multiple of 4 that 2:4 itself needs.

    Raises:
        BadInput: An ``exclude`` pattern is not a regular expression.
    """

    def __init__(self, exclude: list[str] | tuple[str, ...] = (), tc_shapes: str = "strict") -> None:
        if tc_shapes not in TC_SHAPES:
            raise BadInput(f"--tc-shapes {tc_shapes!r}: choose one of {', '.join(TC_SHAPES)}")
        self.tc_shapes = tc_shapes
        self.matched: set[str] = set()
        self.exclude = []
        for pattern in exclude:
            try:
                self.exclude.append((pattern, re.compile(pattern)))
            except re.error as error:
                raise BadInput(f"--exclude {pattern!r}: not a regular expression ({error})") from None

    def call(self, model: ir.Model) -> PassResult:
        # Before IR version 4 every initializer had to be listed as a graph input too, and onnxruntime
        # treats such inputs as constants; from 4 on, an initializer that is also an input can be overridden.
        self._overridable = (model.ir_version or 0) >= 4
        functions = dict(model.functions)
        records = []
        for label, graph in all_graphs(model):
            sources = [InitializerSource(v) for v in getattr(graph, "initializers", {}).values()]
            sources += [
                ConstantNodeSource(node)
                for node in graph
                if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and "value" in node.attributes
            ]
            for source in sources:
                record = self._examine(source, label, functions)
                if record is not None:
                    records.append(record)
        model.meta[META_KEY] = records
        return PassResult(model, modified=False, weights=records)

    def _examine(self, source, graph: str, functions) -> WeightRecord | None:
        tensor = source.tensor
        if tensor is None:
            return None
        value = source.value
        shape = tuple(int(d) for d in tensor.shape)
        stored_dtype = None
        if tensor.dtype in QUANTIZED_DTYPES:
            stored_dtype = np.dtype(tensor.dtype.numpy())
        try:
            trace = trace_uses(value, shape, functions, stored_dtype=stored_dtype)
        except (IndexError, KeyError, ValueError, TypeError, AttributeError) as error:  # a gap the tracer missed
            trace = Trace(gaps=[f"its uses could not be followed ({type(error).__name__}: {error})"])
        if not (trace.uses or trace.problems or trace.integer_ops or trace.gaps):
            return None  # not a weight: a bias, a shape, a lookup table
        record = WeightRecord(
            name=value.name or tensor.name or "",
            source=source,
            graph=graph,
            shape=shape,
            dtype=tensor.dtype.name,
            uses=trace.uses,
            declined_ops=tuple(trace.declined_ops),
        )
        if not trace.uses and not trace.problems and not trace.integer_ops:
            record.skip(trace.gaps[0])  # it may be a weight, but where it goes could not be seen
            return record
        axes = sorted({use.axis for use in trace.uses})
        if len(axes) == 1:
            record.axis = axes[0]
        forms = {(d.form, d.node) for d in trace.dequantized}
        if trace.dequantized:
            record.quantization = trace.dequantized[0]
        reason = self._reason(record, trace, tensor, value, stored_dtype, forms)
        pattern = self._excluded_by(record)
        if reason:
            record.skip(reason)
        elif pattern is not None:
            record.skip(f"excluded by --exclude '{pattern}'", deliberate=True)
        return record

    def _reason(self, record: WeightRecord, trace, tensor, value, stored_dtype, forms) -> str:
        """Why the weight cannot be pruned, or ''."""
        axes = sorted({use.axis for use in trace.uses})
        if trace.integer_ops:
            return f"{tensor.dtype.name}, {trace.integer_ops[0]}"
        if trace.gaps:
            return trace.gaps[0]
        if trace.problems:
            return trace.problems[0]
        if len(axes) > 1:
            detail = ", ".join(f"{u.op_type} '{u.node}' axis {u.axis}" for u in trace.uses)
            return f"its consumers need different axes ({detail})"
        if value.is_graph_input() and getattr(self, "_overridable", True):
            return "is also a graph input, so a caller can override it at run time"
        if trace.others:
            return trace.others[0]
        if len(forms) > 1:
            return f"is dequantized in {len(forms)} different ways on its way to its products"
        if stored_dtype is not None and record.grid is None:
            return f"dtype {tensor.dtype.name} reaches its product without being dequantized"
        if stored_dtype is None and tensor.dtype not in PRUNABLE_DTYPES:
            return f"dtype {tensor.dtype.name} is not a float or quantized weight type"
        length = record.shape[record.axis]
        if length < 4 and any(u.op_type == "Conv" for u in trace.uses):
            return f"only {length} input channels (an RGB input layer?): 2:4 needs groups of 4"
        if length % 4:
            return f"reduction axis {record.axis} has length {length}, not a multiple of 4"
        return self._shape_reason(record, trace.uses)

    def _shape_reason(self, record: WeightRecord, uses) -> str:
        """Why the weight's shape cannot use Sparse Tensor Cores under the rule, or ''."""
        if self.tc_shapes == "off":
            return ""
        length = record.shape[record.axis]
        problems = []
        if length % 16:
            problems.append(f"reduction axis {record.axis} has length {length}, not a multiple of 16")
        out_axes = {u.out_axis for u in uses if u.out_axis is not None}
        if self.tc_shapes == "strict" and len(out_axes) == 1:
            out_axis = out_axes.pop()
            if record.shape[out_axis] % 8:
                problems.append(f"output axis {out_axis} has length {record.shape[out_axis]}, not a multiple of 8")
        if not problems:
            return ""
        return (
            f"{' and '.join(problems)}: no Sparse Tensor Core tile fits, pruning would cost accuracy for no speed "
            f"(--tc-shapes {self.tc_shapes}; 'off' prunes it anyway)"
        )

    def _excluded_by(self, record: WeightRecord) -> str | None:
        names = [record.name] + [use.node for use in record.uses]
        found = None
        for pattern, regex in self.exclude:
            if any(regex.search(name) for name in names):
                self.matched.add(pattern)
                found = found or pattern
        return found

    @property
    def unmatched(self) -> list[str]:
        """``exclude`` patterns that matched no weight, nor a node using one (after :meth:`call`)."""
        return [pattern for pattern, _ in self.exclude if pattern not in self.matched]
