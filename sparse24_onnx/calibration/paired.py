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
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

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

    def blocks(self, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(H~, C, H)`` (float64) over every row (``full``), the fitted rows (``fit``) or the held-out ones
        (``held``; None without them)."""
        stats = self.joint
        if kind == "full":
            z = np.asarray(stats.hessian, dtype=np.float64)
        elif kind == "held":
            if stats.held_out is None:
                return None
            z = np.asarray(stats.held_out, dtype=np.float64)
        else:
            z = np.asarray(stats.fit_hessian(), dtype=np.float64)
        p, d = self.pruned, self.dense
        return z[np.ix_(p, p)], z[np.ix_(p, d)], z[np.ix_(d, d)]

    @property
    def pruned_stats(self) -> LayerStats:
        """The pruned-side statistics alone, as :func:`~.capture.collect_stats` would give them."""
        channels = self.joint.sq_norm.shape[0] // 2
        return self.joint.subset(self.pruned, np.arange(channels))


def collect_paired_stats(
    dense: ir.Model,
    pruned: ir.Model,
    record: WeightRecord,
    feeds,
    *,
    hold_out: bool,
    rows_per_feature: int,
    hint: str = "check the arrays of --calibration",
) -> PairedStats | Unpaired:
    """The paired statistics of ``record``'s layer input, or why the pairing does not apply (a weight with
    several layer inputs, inside a subgraph, a grouped convolution): the caller then fits it uncorrected.
    Both models must hold the layer input under the same name (one is the other before pruning)."""
    pairs = layer_inputs(pruned, [record]).get(record.name, [])
    if len(pairs) != 1:
        return Unpaired(f"the weight reads {len(pairs) or 'no captured'} layer input(s), not one")
    value, layout = pairs[0]
    if value.graph is not pruned.graph:
        return Unpaired("its layer input is inside a subgraph")
    if isinstance(layout, ConvPatches) and layout.groups != 1:
        return Unpaired("a grouped convolution")
    twin = next((v for n in dense.graph for v in n.outputs if v.name == value.name), None)
    if twin is None:
        twin = next((v for v in dense.graph.inputs if v.name == value.name), None)
    if twin is None:
        return Unpaired(f"the dense model has no value {value.name!r}")
    kind = "channels" if isinstance(layout, ConvPatches) else layout
    axis = _FEATURE_AXIS[kind]
    k = int(record.shape[record.axis])
    joined_layout = layout
    if isinstance(layout, ConvPatches):
        joined_layout = ConvPatches(layout.kernel, layout.strides, layout.pads, layout.dilations, layout.auto_pad)
    features = joined_layout.features(2 * k) if isinstance(layout, ConvPatches) else 2 * k
    item = _Input([(value, joined_layout)], features, 2 * k, weights=[record.name])
    if rows_per_feature and len(feeds):
        item.cap = max(1, -(-rows_per_feature * features // len(feeds)))
    by_feed = hold_out and len(feeds) >= 4
    with tempfile.TemporaryDirectory(prefix="sparse24-paired-") as folder:
        sessions = []
        for model, exposed in ((pruned, value), (dense, twin)):
            added = exposed not in model.graph.outputs
            if added:
                model.graph.outputs.append(exposed)
            try:
                sessions.append((open_model_session(model, Path(folder) / f"{len(sessions)}.onnx"), exposed.name))
            finally:
                if added:
                    model.graph.outputs.remove(exposed)
        for index, feed in enumerate(feeds):
            activations = []
            for session, name in sessions:
                names = [o.name for o in session.get_outputs()]
                activations.append(run_feeds(session, [feed], hint=hint)[0][names.index(name)])
            if any(np.asarray(a).size == 0 for a in activations):
                continue
            joined = np.concatenate([np.asarray(a) for a in activations], axis=axis)
            _accumulate(
                item, joined_layout, joined, True,
                held=hold_out and by_feed and index % 4 == 3, split_rows=hold_out and not by_feed, feed=index,
            )  # fmt: skip
        del sessions
    if item.stats is None or item.stats.hessian is None:
        why = item.stats.no_hessian if item.stats is not None else "no calibration rows reached it"
        return Unpaired(why or "no X^T X")
    item.flush()
    positions = features // (2 * k)
    offsets = np.arange(positions)[:, None] * 2 * k
    pruned_index = (offsets + np.arange(k)[None, :]).reshape(-1)
    return PairedStats(item.stats, pruned_index, pruned_index + k)
