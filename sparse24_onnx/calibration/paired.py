"""Statistics for error-correcting layer targets: a layer's input in the model pruned so far (``X~``) beside
its input in the dense model (``X``), on the same calibration rows.

A layer pruned one-shot is fitted to reproduce its own output on its own input; when the
layers before it are already pruned, its input has moved, and the output that matters is the
dense model's.  The asymmetric objective (GPTAQ, Li et al., ICML 2025)

    ||X~ W'^T - X W^T||^2 = tr(W' H~ W'^T) - 2 tr(W' C W^T) + tr(W H W^T)

needs ``H~ = X~^T X~``, the cross term ``C = X~^T X`` and ``H = X^T X``.  All three are the
blocks of ``Z^T Z`` for ``Z = [X~ | X]`` (the two activations side by side along the features),
so the capture is the ordinary one (:mod:`.capture`: row sampling, held-out rows, NaN rows)
run on the two models' activations joined along K.

Block level: a MatMul/Gemm whose output (through a bias ``Add`` or a ``Reshape``) is added to
a residual stream gets the stream's error ``E = R - R~`` joined too, ``Z = [X~ | X | E]``, so
that ``G = X~^T E``, ``F = X^T E`` and ``||E||^2`` come from the same product
(:class:`~..core.correction.Residual`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..core.correction import Residual
from ..passes.weights import WeightRecord
from ..runtime.sessions import open_model_session, run_feeds
from .capture import ConvPatches, LayerStats, _accumulate, _Input, layer_inputs

__all__ = ["PairedStats", "Unpaired", "collect_paired_stats"]

#: The axis along which each activation layout holds the layer's K features (what the two are joined along).
_FEATURE_AXIS = {"last": -1, "second_last": -2, "first": 0, "channels": 1}


@dataclass(frozen=True)
class Unpaired:
    """Why a layer's input could not be paired with the dense model's (its fit stays uncorrected)."""

    reason: str


@dataclass
class PairedStats:
    """``Z^T Z`` for ``Z = [X~ | X]`` (float32, with its held-out part) and where each block's features are.

    ``pruned`` and ``dense`` index ``Z``'s features: ``Z[:, pruned]`` is ``X~``, ``Z[:, dense]`` is ``X``
    (for a convolution's im2col rows the two interleave per kernel position).
    """

    joint: LayerStats
    pruned: np.ndarray
    dense: np.ndarray
    #: ``Z``'s features holding the residual stream's error ``E`` (None: no residual stream, or not used).
    error: np.ndarray | None = None
    #: Why a residual stream that was found is not used (its rows did not line up with the layer input's).
    residual_note: str = ""
    #: The layer input's channels (``K``, or a convolution's input channels): ``sum of X_j^2`` comes first.
    channels: int = 0

    def blocks(self, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(H~, C, H)`` (float64) over every row (``full``), the fitted rows (``fit``) or the held-out ones
        (``held``; None without them)."""
        z = self._joint(kind)
        if z is None:
            return None
        p, d = self.pruned, self.dense
        # Each block sliced from the float32 sums, then made float64, rather than a float64 copy of the whole
        # Z^T Z first (the captcha CRNN's LSTM has an 8192 x 8192 one).
        return tuple(np.asarray(z[np.ix_(a, b)], dtype=np.float64) for a, b in ((p, p), (p, d), (d, d)))

    def _joint(self, kind: str) -> np.ndarray | None:
        """``Z^T Z`` (float32) over the rows of ``kind`` (as :meth:`blocks`)."""
        stats = self.joint
        if kind == "full":
            return np.asarray(stats.hessian)
        if kind == "held":
            return None if stats.held_out is None else np.asarray(stats.held_out)
        return np.asarray(stats.fit_hessian())

    def residual(self, kind: str) -> Residual | None:
        """``G = X~^T E``, ``F = X^T E`` and ``||E||^2`` over the rows of ``kind`` (as :meth:`blocks`), or
        None without a residual stream."""
        if self.error is None:
            return None
        z = self._joint(kind)
        if z is None:
            return None
        e = self.error
        return Residual(
            np.asarray(z[np.ix_(self.pruned, e)], dtype=np.float64),
            np.asarray(z[np.ix_(self.dense, e)], dtype=np.float64),
            np.asarray(np.diagonal(z)[e], dtype=np.float64),
        )

    @property
    def pruned_stats(self) -> LayerStats:
        """The pruned-side statistics alone, as :func:`~.capture.collect_stats` would give them."""
        return self.joint.subset(self.pruned, np.arange(self.channels))


#: Nodes a layer's output may pass through on its way to the residual ``Add`` (a bias ``Add``, a reshape
#: that only regroups rows, an identity): their outputs keep the rows of the layer's input in order.
_ROW_KEEPING = ("Add", "Reshape", "Identity")


def residual_stream(node: ir.Node) -> ir.Value | None:
    """The residual stream the output of ``node`` (a MatMul/Gemm) is added to, or None.

    Followed through a bias ``Add`` (a constant operand), ``Reshape`` and ``Identity``, each the only
    reader of what it reads; the stream is the other operand of the first ``Add`` of two computed values.
    """
    value = node.outputs[0]
    for _ in range(6):
        uses = list(value.uses())
        if len(uses) != 1:
            return None
        user, index = uses[0].node, uses[0].idx
        if user.op_type not in _ROW_KEEPING or user.domain not in ("", "ai.onnx"):
            return None
        if user.op_type == "Add":
            other = user.inputs[1 - index]
            if other is None:
                return None
            producer = other.producer()
            constant = other.const_value is not None or (producer is not None and producer.op_type == "Constant")
            if not constant:
                return other if other.name else None
        elif index != 0:
            return None
        value = user.outputs[0]
    return None


def collect_paired_stats(
    dense: ir.Model,
    pruned: ir.Model,
    record: WeightRecord,
    feeds,
    *,
    hold_out: bool,
    rows_per_feature: int,
    hint: str = "check the arrays of --calibration",
    residual: bool = True,
) -> PairedStats | Unpaired:
    """The paired statistics of ``record``'s layer input(s), or why the pairing does not apply (inside a
    subgraph, a grouped convolution, several inputs read in different layouts): the caller then fits it
    uncorrected.  Both models must hold the layer inputs under the same names (one is the other before
    pruning).  A weight read by several layer inputs alike (an unrolled recurrent cell's time steps) sums
    their products, as the ordinary capture does: its fit is over every step.

    With ``residual``, a layer whose output is added to a residual stream (:func:`residual_stream`, rows
    in the layout ``last``, one layer input) gets the stream's error joined too (the module docstring)."""
    pairs = layer_inputs(pruned, [record]).get(record.name, [])
    if not pairs:
        return Unpaired("its layer input was not captured")
    layout = pairs[0][1]
    if any(v.graph is not pruned.graph for v, _ in pairs):
        return Unpaired("its layer input is inside a subgraph")
    if isinstance(layout, ConvPatches) and layout.groups != 1:
        return Unpaired("a grouped convolution")
    if any(other != layout for _, other in pairs[1:]):
        return Unpaired(f"the weight reads {len(pairs)} layer inputs in different layouts")
    twins = [_twin(dense, v.name) for v, _ in pairs]
    missing = next((v.name for (v, _), twin in zip(pairs, twins, strict=True) if twin is None), None)
    if missing is not None:
        return Unpaired(f"the dense model has no value {missing!r}")
    kind = "channels" if isinstance(layout, ConvPatches) else layout
    axis = _FEATURE_AXIS[kind]
    k = int(record.shape[record.axis])
    joined_layout = layout
    if isinstance(layout, ConvPatches):
        joined_layout = ConvPatches(layout.kernel, layout.strides, layout.pads, layout.dilations, layout.auto_pad)
    stream = twin_stream = None
    n = 0
    single = len(pairs) == 1 and len(record.uses) == 1 and record.uses[0].ref is not None
    if residual and layout == "last" and single:
        stream = residual_stream(record.uses[0].ref)
        twin_stream = None if stream is None else _twin(dense, stream.name)
        if twin_stream is None:
            stream = None
        else:
            n = int(np.prod(record.shape)) // k  # the layer's outputs: E's features
    features = joined_layout.features(2 * k) if isinstance(layout, ConvPatches) else 2 * k + n
    item = _Input([(v, joined_layout) for v, _ in pairs], features, 2 * k + n, weights=[record.name])
    if rows_per_feature and len(feeds):
        item.cap = max(1, -(-rows_per_feature * features // len(feeds)))
    by_feed = hold_out and len(feeds) >= 4
    values = [v for v, _ in pairs]
    with tempfile.TemporaryDirectory(prefix="sparse24-paired-") as folder:
        sessions = []
        for model, wanted in ((pruned, [*values, stream]), (dense, [*twins, twin_stream])):
            exposed = list(dict.fromkeys(v for v in wanted if v is not None))
            added = [v for v in exposed if v not in model.graph.outputs]
            model.graph.outputs.extend(added)
            try:
                session = open_model_session(model, Path(folder) / f"{len(sessions)}.onnx")
                sessions.append((session, [v.name for v in wanted if v is not None]))
            finally:
                for v in added:
                    model.graph.outputs.remove(v)
        misaligned = ""
        for index, feed in enumerate(feeds):
            per_model = []
            for session, wanted in sessions:
                names = [o.name for o in session.get_outputs()]
                outputs = run_feeds(session, [feed], hint=hint)[0]
                per_model.append([np.asarray(outputs[names.index(name)]) for name in wanted])
            for source in range(len(values)):
                activations = [per_model[0][source], per_model[1][source]]
                if any(a.size == 0 for a in activations):
                    continue
                if stream is not None:
                    streams = [np.asarray(m[-1], dtype=np.float32) for m in per_model]
                    x_pruned, x_dense = (a.reshape(-1, k) for a in activations)
                    error = (streams[1] - streams[0]).reshape(-1, n) if streams[0].size % n == 0 else None
                    if error is None or error.shape[0] != x_pruned.shape[0]:
                        # The stream's rows are not the layer input's: its error cannot be used (for any feed).
                        misaligned = (
                            f"the residual stream {stream.name!r} has {streams[0].shape} values for "
                            f"{x_pruned.shape[0]} rows of the layer input"
                        )
                        error = np.zeros((x_pruned.shape[0], n), np.float32)
                    joined = np.concatenate([x_pruned, x_dense, error.astype(x_pruned.dtype)], axis=-1)
                else:
                    joined = np.concatenate(activations, axis=axis)
                _accumulate(
                    item, joined_layout, joined, True, held=hold_out and by_feed and index % 4 == 3,
                    split_rows=hold_out and not by_feed, feed=index, source=source,
                )  # fmt: skip
        del sessions
    if item.stats is None or item.stats.hessian is None:
        why = item.stats.no_hessian if item.stats is not None else "no calibration rows reached it"
        return Unpaired(why or "no X^T X")
    item.flush()
    positions = features // (2 * k)
    offsets = np.arange(positions)[:, None] * 2 * k
    pruned_index = (offsets + np.arange(k)[None, :]).reshape(-1)
    error_index = np.arange(2 * k, 2 * k + n) if stream is not None and not misaligned else None
    return PairedStats(item.stats, pruned_index, pruned_index + k, error_index, misaligned, channels=k)


def _twin(dense: ir.Model, name: str) -> ir.Value | None:
    """The dense model's value of this name (a node's output or a graph input), or None."""
    found = next((v for node in dense.graph for v in node.outputs if v.name == name), None)
    return found if found is not None else next((v for v in dense.graph.inputs if v.name == name), None)
