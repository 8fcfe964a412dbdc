"""Pruning methods: how the importance of each weight element is scored.

A method turns one weight tensor into its dense 2:4-pruned version (or says why
it cannot), so the prune pass does not care which rule chose the kept elements.
New methods (activation-aware, Hessian-based) implement the same two members.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

import numpy as np

from .calibration import LayerStats
from .core import gradient_importance, prune_24_dense
from .core.sparsegpt import layer_output_error, sparsegpt_24, wanda_importance
from .errors import BadInput
from .weights import WeightRecord

__all__ = [
    "GradientMethod",
    "MagnitudeMethod",
    "Precomputed",
    "PruneMethod",
    "SequentialMethod",
    "SparseGPTMethod",
    "WandaMethod",
    "load_gradients",
]


class PruneMethod(Protocol):
    """What the prune pass needs from a method."""

    #: Name recorded in the report and the model's provenance.
    name: str
    #: Whether kept values stay as they were (only the mask is chosen): faster metrics.
    values_kept: bool
    #: Whether any block of whole rows (along axis 0, in multiples of 4 when the
    #: groups run along axis 0) can be pruned on its own: large external tensors
    #: are then streamed block by block.
    blockwise: bool

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        """The dense 2:4 version of ``weights`` along ``record.axis``; a string is the reason to skip it.

        ``out``, when given, is a buffer of the weights' shape and dtype to write into.
        """
        ...


class MagnitudeMethod:
    """Keep the 2 largest ``|w|`` of every group of 4."""

    name = "magnitude"
    blockwise = True
    values_kept = True

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        return prune_24_dense(weights, record.axis, out=out)


class GradientMethod:
    """Keep the 2 largest ``|w * g|`` of every group of 4, ``g`` the loss gradient.

    Args:
        gradients: Gradient arrays keyed by weight (initializer) name, each the
            weight's shape.  Weights without a gradient are skipped.
    """

    name = "gradient"
    blockwise = False
    values_kept = True

    def __init__(self, gradients: Mapping[str, np.ndarray]) -> None:
        self.gradients = gradients

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        if record.name not in self.gradients:
            return "no gradient for this tensor in --gradients"
        gradient = np.asarray(self.gradients[record.name])
        if gradient.shape != weights.shape:
            raise BadInput(f"--gradients: '{record.name}' has shape {gradient.shape}, the weight has {weights.shape}")
        if not np.isfinite(gradient).all():
            return "its gradient contains NaN or Inf"
        if not np.isfinite(weights).all():
            return "contains NaN or Inf"
        return prune_24_dense(weights, record.axis, gradient_importance(weights, gradient), out=out)


def load_gradients(path: str | os.PathLike) -> Mapping[str, np.ndarray]:
    """Open a ``.npz`` of gradients keyed by initializer name (arrays load on access)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BadInput(f"{path}: no such gradients file") from None
    except (OSError, ValueError) as error:
        raise BadInput(f"{path}: not a readable .npz file ({error})") from None


def _rows_view(weights: np.ndarray, axis: int) -> np.ndarray:
    """A weight as (rows, K): K its reduction axis, one row per output feature."""
    moved = np.moveaxis(weights, axis, -1)
    return moved.reshape(-1, moved.shape[-1])


def _from_rows(rows: np.ndarray, like: np.ndarray, axis: int) -> np.ndarray:
    moved_shape = np.moveaxis(np.empty(like.shape, dtype=np.bool_), axis, -1).shape
    return np.moveaxis(rows.reshape(moved_shape), -1, axis)


class _Calibrated:
    """Shared by the calibration-aware methods: statistics per weight, notes for the report."""

    blockwise = False

    def __init__(self, stats: dict[str, LayerStats]) -> None:
        self.stats = stats

    def _note(self, record: WeightRecord, weights: np.ndarray, pruned: np.ndarray, used: str) -> None:
        stats = self.stats.get(record.name)
        record.calibration = {"method": used, "samples": stats.rows if stats else 0, "layer_output_error": None}
        if stats is not None and stats.hessian is not None and weights.ndim >= 2:
            record.calibration["layer_output_error"] = layer_output_error(
                _rows_view(weights, record.axis), _rows_view(pruned, record.axis), stats.hessian
            )


class WandaMethod(_Calibrated):
    """Keep the 2 of every 4 with the largest ``|w| * ||X_j||`` (Wanda); kept values unchanged.

    Weights whose layer input was not captured (inside a subgraph or function)
    fall back to magnitude, which the report says.
    """

    name = "wanda"
    values_kept = True

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        stats = self.stats.get(record.name)
        if stats is None:
            pruned = prune_24_dense(weights, record.axis, out=out)
            self._note(record, weights, pruned, "magnitude (no calibration activations reach this layer)")
            return pruned
        if not np.isfinite(weights).all():
            return "contains NaN or Inf"
        importance = wanda_importance(weights, stats.sq_norm, record.axis)
        pruned = prune_24_dense(weights, record.axis, importance, out=out)
        self._note(record, weights, pruned, "wanda")
        return pruned


class SparseGPTMethod(_Calibrated):
    """SparseGPT: 2:4 masks chosen and kept weights updated from ``H = X^T X``.

    Needs the Hessian (K up to 8192); 2-D weights only.  Other weights (Conv, or
    no Hessian) are pruned with Wanda; those with no captured input with
    magnitude; the report says which.
    """

    name = "sparsegpt"
    values_kept = False

    def __init__(self, stats: dict[str, LayerStats], damp: float = 0.01) -> None:
        super().__init__(stats)
        self.damp = damp
        self.wanda = WandaMethod(stats)

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        stats = self.stats.get(record.name)
        if stats is not None and stats.im2col and stats.hessian is not None and weights.ndim == 4:
            return self._prune_conv(record, weights, stats)
        if stats is None or stats.hessian is None or weights.ndim != 2:
            pruned = self.wanda.prune(record, weights, out)
            if isinstance(pruned, str) or stats is None:
                return pruned
            if weights.ndim == 4:
                reason = "grouped, strided by auto_pad, or too large a Conv"
            elif weights.ndim != 2:
                reason = "Conv other than 2-D, or batched weight"
            else:
                reason = f"K = {weights.shape[record.axis]} too large"
            record.calibration["method"] = f"wanda (SparseGPT: {reason})"
            return pruned
        if not np.isfinite(weights).all():
            return "contains NaN or Inf"
        rows = sparsegpt_24(_rows_view(weights, record.axis), stats.hessian, damp=self.damp)
        pruned = np.ascontiguousarray(_from_rows(rows, weights, record.axis)).astype(weights.dtype)
        # Casting to a narrower dtype can only add zeros; the pruned ones are exact zeros already.
        self._note(record, weights, pruned, "sparsegpt")
        return pruned

    def _prune_conv(self, record: WeightRecord, weights: np.ndarray, stats: LayerStats) -> np.ndarray | str:
        """SparseGPT on the im2col view: 4 consecutive columns are 4 input channels at one kernel position."""
        if not np.isfinite(weights).all():
            return "contains NaN or Inf"
        rows = sparsegpt_24(_conv_rows(weights), stats.hessian, damp=self.damp)
        pruned = np.ascontiguousarray(_conv_from_rows(rows, weights.shape)).astype(weights.dtype)
        record.calibration = {
            "method": "sparsegpt (im2col)",
            "samples": stats.rows,
            "layer_output_error": layer_output_error(_conv_rows(weights), _conv_rows(pruned), stats.hessian),
        }
        return pruned


class Precomputed:
    """A method whose results are already known (the accuracy budget computed them): reused, not redone."""

    blockwise = False

    def __init__(self, inner: PruneMethod, results: dict[str, np.ndarray]) -> None:
        self.inner = inner
        self.name = inner.name
        self.values_kept = inner.values_kept
        self.results = results

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        if record.name not in self.results:
            return self.inner.prune(record, weights, out)
        return self.results[record.name]


def _conv_rows(weights: np.ndarray) -> np.ndarray:
    """A Conv weight ``[M, C, kh, kw]`` as ``(M, kh * kw * C)``, channels fastest (the im2col order)."""
    return weights.transpose(0, 2, 3, 1).reshape(weights.shape[0], -1)


def _conv_from_rows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    m, c, kh, kw = shape
    return rows.reshape(m, kh, kw, c).transpose(0, 3, 1, 2)


class SequentialMethod:
    """Wanda or SparseGPT, each layer calibrated on the model as already pruned before it.

    SparseGPT's recipe: layers are pruned in graph order, and each one's input
    statistics are captured from the model in which every earlier layer is
    already pruned, so later layers compensate for the error of earlier ones.
    Costs one onnxruntime session per layer.
    """

    blockwise = False
    sequential = True

    def __init__(self, name: str, model, feeds: list[dict[str, np.ndarray]], damp: float = 0.01) -> None:
        self.name = name
        self.values_kept = name == "wanda"
        self.model = model
        self.feeds = feeds
        self.damp = damp

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        from .calibration import collect_stats

        stats = collect_stats(self.model, [record], self.feeds, hessian=self.name == "sparsegpt")
        inner = WandaMethod(stats) if self.name == "wanda" else SparseGPTMethod(stats, damp=self.damp)
        pruned = inner.prune(record, weights, out)
        if record.calibration is not None:
            record.calibration["sequential"] = True
        return pruned
