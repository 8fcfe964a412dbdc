"""Calibration: the statistics of each prunable layer's input, captured with onnxruntime.

The input activation of every weight's layer is exposed as an extra graph
output, the model runs on each calibration feed, and per weight the running
sums that the methods need are accumulated: ``sum of X_j^2`` per reduction
index ``j`` (Wanda) and ``X^T X`` (SparseGPT, and the layer output error in the
report).  Only one feed's activations are held at a time.

``X`` is the layer input seen as rows of ``K`` features, ``K`` the weight's
reduction axis: ``MatMul(X, W)`` and ``Gemm(X, W)`` read ``X``'s last axis
(a transposed ``X`` of a ``Gemm`` with ``transA=1`` is turned back), ``MatMul(W, X)``
its second-to-last, and ``Conv`` its channels (axis 1).  A weight used by several
nodes gets the sum over all of them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from .model_writer import write_embedded
from .validate import open_session, run_feeds
from .weights import WeightRecord

__all__ = ["LayerStats", "collect_stats", "input_rows"]

#: Largest K for which X^T X is accumulated (K x K float64).
MAX_HESSIAN_K = 8192


@dataclass
class LayerStats:
    """Running input statistics of one weight's layer(s).

    Attributes:
        rows: Number of input rows (tokens, pixels ...) seen.
        sq_norm: ``(K,)`` sum of the squares of each input feature.
        hessian: ``(K, K)`` ``X^T X``, or None when not collected (K too large).
    """

    rows: int
    sq_norm: np.ndarray
    hessian: np.ndarray | None


def _uses(record: WeightRecord) -> list[tuple[ir.Node, int]]:
    return [] if record.source is None else list(record.source.value.uses())


def _data_value(node: ir.Node, index: int) -> tuple[ir.Value, str] | None:
    """The activation feeding the layer that reads a weight at ``index``, and how to read its rows."""
    if node.op_type == "MatMul":
        return (node.inputs[0], "last") if index == 1 else (node.inputs[1], "second_last")
    if node.op_type == "Gemm" and index == 1:
        return node.inputs[0], ("first" if node.attributes.get_int("transA", 0) else "last")
    if node.op_type == "Conv" and index == 1:
        return node.inputs[0], "channels"
    return None


def input_rows(array: np.ndarray, layout: str) -> np.ndarray:
    """An activation as ``(n, K)`` rows of features (see the module docstring)."""
    array = np.asarray(array, dtype=np.float64)
    if layout == "last":
        return array.reshape(-1, array.shape[-1])
    if layout == "second_last":
        return np.moveaxis(array, -2, -1).reshape(-1, array.shape[-2])
    if layout == "first":
        return array.reshape(array.shape[0], -1).T
    if layout == "channels":
        return np.moveaxis(array, 1, -1).reshape(-1, array.shape[1])
    raise ValueError(layout)


def layer_inputs(model: ir.Model, records: list[WeightRecord]) -> dict[str, list[tuple[ir.Value, str]]]:
    """Per weight, the main-graph activations that feed it (weights elsewhere are left out)."""
    found: dict[str, list[tuple[ir.Value, str]]] = {}
    for record in records:
        pairs = []
        for node, index in _uses(record):
            data = _data_value(node, index)
            if data is None or data[0] is None or data[0].graph is not model.graph or not data[0].name:
                pairs = []
                break
            pairs.append(data)
        if pairs:
            found[record.name] = pairs
    return found


def collect_stats(
    model: ir.Model,
    records: list[WeightRecord],
    feeds: list[dict[str, np.ndarray]],
    *,
    hessian: bool = True,
) -> dict[str, LayerStats]:
    """Run the model on ``feeds`` and accumulate each weight's input statistics.

    The model is written (every tensor embedded) to a temporary file with the
    activations added as outputs, and loaded into onnxruntime once; the model
    object itself is left as it was.
    """
    inputs = layer_inputs(model, records)
    values = {id(v): v for pairs in inputs.values() for v, _ in pairs}
    if not values:
        return {}
    outputs = list(model.graph.outputs)
    added = [v for v in values.values() if v not in outputs]
    model.graph.outputs.extend(added)
    try:
        with tempfile.TemporaryDirectory(prefix="sparse24-calibration-") as folder:
            path = Path(folder) / "calibration.onnx"
            write_embedded(model, path)
            session = open_session(path, role="output")
            names = [o.name for o in session.get_outputs()]
            stats: dict[str, LayerStats] = {}
            for feed in feeds:
                run = dict(zip(names, run_feeds(session, [feed])[0], strict=True))
                for weight, pairs in inputs.items():
                    for value, layout in pairs:
                        rows = input_rows(run[value.name], layout)
                        _accumulate(stats, weight, rows, hessian)
                del run
            del session
    finally:
        for value in added:
            model.graph.outputs.remove(value)
    return stats


def _accumulate(stats: dict[str, LayerStats], weight: str, rows: np.ndarray, hessian: bool) -> None:
    k = rows.shape[1]
    current = stats.get(weight)
    if current is None:
        want = hessian and k <= MAX_HESSIAN_K
        current = stats[weight] = LayerStats(0, np.zeros(k), np.zeros((k, k)) if want else None)
    current.rows += rows.shape[0]
    current.sq_norm += np.einsum("nk,nk->k", rows, rows)
    if current.hessian is not None:
        current.hessian += rows.T @ rows
