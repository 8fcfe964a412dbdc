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

from ..modelio.writer import write_embedded
from ..passes.weights import WeightRecord
from ..validation.sessions import open_session, run_feeds

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
            For a 2-D Conv it is over the im2col patches, ``K = kh * kw * C`` with
            the channels fastest (``im2col`` is then True), while ``sq_norm`` stays
            per input channel.
    """

    rows: int
    sq_norm: np.ndarray
    hessian: np.ndarray | None
    im2col: bool = False


def _data_value(node: ir.Node, index: int) -> tuple[ir.Value, str | ConvPatches] | None:
    """The activation feeding the layer that reads a weight at ``index``, and how to read its rows."""
    if node.op_type == "MatMul":
        return (node.inputs[0], "last") if index == 1 else (node.inputs[1], "second_last")
    if node.op_type == "Gemm" and index == 1:
        return node.inputs[0], ("first" if node.attributes.get_int("transA", 0) else "last")
    if node.op_type == "Conv" and index == 1:
        return node.inputs[0], ConvPatches.of(node)
    return None


@dataclass(frozen=True)
class ConvPatches:
    """How a 2-D, ungrouped Conv reads its input: the im2col view SparseGPT needs.

    ``kernel`` is ``None`` for convolutions this view does not cover (other
    ranks, groups, ``auto_pad``); they get the per-channel statistics only.
    """

    kernel: tuple[int, int] | None
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilations: tuple[int, int] = (1, 1)

    @classmethod
    def of(cls, node: ir.Node) -> ConvPatches:
        weight = node.inputs[1]
        shape = weight.const_value.shape if weight is not None and weight.const_value is not None else None
        if shape is None and weight is not None and weight.producer() is not None:
            attribute = weight.producer().attributes.get("value")
            shape = attribute.value.shape if attribute is not None else None
        auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
        if shape is None or len(shape) != 4 or node.attributes.get_int("group", 1) != 1 or auto_pad != "NOTSET":
            return cls(None)
        return cls(
            (int(shape[2]), int(shape[3])),
            tuple(node.attributes.get_ints("strides", [1, 1])),
            tuple(node.attributes.get_ints("pads", [0, 0, 0, 0])),
            tuple(node.attributes.get_ints("dilations", [1, 1])),
        )

    def rows(self, x: np.ndarray) -> np.ndarray:
        """``(N * H_out * W_out, kh * kw * C)`` patches, features in (i, j, c) order: channels fastest.

        With that order, 4 consecutive features are 4 consecutive input channels
        at one kernel position: the groups of 4 TensorRT prunes a Conv weight in.
        """
        kh, kw = self.kernel
        x = np.pad(x, ((0, 0), (0, 0), (self.pads[0], self.pads[2]), (self.pads[1], self.pads[3])))
        n, c, h, w = x.shape
        (sh, sw), (dh, dw) = self.strides, self.dilations
        h_out = (h - dh * (kh - 1) - 1) // sh + 1
        w_out = (w - dw * (kw - 1) - 1) // sw + 1
        patches = np.empty((n, h_out, w_out, kh, kw, c))
        for i in range(kh):  # one strided slice per kernel position, whole arrays each
            for j in range(kw):
                window = x[
                    :, :, i * dh : i * dh + sh * (h_out - 1) + 1 : sh, j * dw : j * dw + sw * (w_out - 1) + 1 : sw
                ]
                patches[:, :, :, i, j, :] = window.transpose(0, 2, 3, 1)
        return patches.reshape(n * h_out * w_out, kh * kw * c)


def input_rows(array: np.ndarray, layout: str | ConvPatches) -> np.ndarray:
    """An activation as ``(n, K)`` rows of features (see the module docstring); per channel for a Conv."""
    array = np.asarray(array, dtype=np.float64)
    if isinstance(layout, ConvPatches):
        layout = "channels"
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
    """Per weight, the main-graph activations that feed its products (weights elsewhere are left out).

    The products are the nodes the tracing reached (``record.uses``), so weights
    reaching them through casts, transposes or dequantization count too.  A
    convolution whose weight was transposed or reshaped on the way is left out
    (its im2col view would not match the stored layout).
    """
    found: dict[str, list[tuple[ir.Value, str]]] = {}
    for record in records:
        pairs = []
        for use in record.uses:
            node = use.ref if use.ref is not None and use.ref.graph is model.graph else None
            reordered = any(op in ("Transpose", "Reshape", "Flatten", "Unsqueeze", "Squeeze") for op in use.via)
            data = None if node is None else _data_value(node, use.input_index)
            if data is None or data[0] is None or not data[0].name or (node.op_type == "Conv" and reordered):
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
    hint: str = "check the arrays of --calibration",
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
                run = dict(zip(names, run_feeds(session, [feed], hint=hint)[0], strict=True))
                for weight, pairs in inputs.items():
                    for value, layout in pairs:
                        rows = input_rows(run[value.name], layout)
                        patches = None
                        if hessian and isinstance(layout, ConvPatches) and layout.kernel is not None:
                            patches = layout.rows(np.asarray(run[value.name], dtype=np.float64))
                        _accumulate(stats, weight, rows, hessian, patches)
                del run
            del session
    finally:
        for value in added:
            model.graph.outputs.remove(value)
    return stats


def _accumulate(
    stats: dict[str, LayerStats], weight: str, rows: np.ndarray, hessian: bool, patches: np.ndarray | None = None
) -> None:
    k = rows.shape[1]
    features = patches if patches is not None else rows
    current = stats.get(weight)
    if current is None:
        want = hessian and features.shape[1] <= MAX_HESSIAN_K
        h = np.zeros((features.shape[1],) * 2) if want else None
        current = stats[weight] = LayerStats(0, np.zeros(k), h, im2col=patches is not None)
    current.rows += rows.shape[0]
    current.sq_norm += np.einsum("nk,nk->k", rows, rows)
    if current.hessian is not None:
        current.hessian += features.T @ features
