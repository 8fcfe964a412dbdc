"""Pruning methods: how the importance of each weight element is scored.

A method turns one weight tensor into its dense 2:4-pruned version (or says why
it cannot), so the prune pass does not care which rule chose the kept elements.
New methods (activation-aware, Hessian-based) implement the same two members.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from ..core import gradient_importance, prune_24_dense
from ..core.quantized import QuantGrid
from ..core.sparsegpt import layer_output_error, refit_kept, sparsegpt_24, wanda_importance
from ..errors import BadInput
from ..passes.prune_weights import PruneMethod
from ..passes.weights import WeightRecord
from .capture import LayerStats

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


class _MatrixView:
    """A weight as the ``(rows, K)`` matrix its layer's Hessian ``X^T X`` is ``(K, K)`` for.

    MatMul/Gemm weights: K is the reduction axis.  2-D Conv weights with im2col
    statistics: ``[M, C, kh, kw]`` as ``(M, kh * kw * C)``, channels fastest, so
    that 4 consecutive columns are 4 input channels at one kernel position.
    """

    def __init__(self, weights: np.ndarray, axis: int, im2col: bool) -> None:
        self.shape = weights.shape
        self.axis = axis
        self.im2col = im2col

    @classmethod
    def of(cls, weights: np.ndarray, axis: int, stats: LayerStats | None) -> _MatrixView | None:
        """The view that matches ``stats.hessian``, or None when there is none."""
        if stats is None or stats.hessian is None:
            return None
        if stats.im2col and weights.ndim == 4:
            return cls(weights, axis, True)
        if weights.ndim == 2 and stats.hessian.shape[0] == weights.shape[axis]:
            return cls(weights, axis, False)
        return None

    def rows(self, weights: np.ndarray) -> np.ndarray:
        if self.im2col:
            return weights.transpose(0, 2, 3, 1).reshape(weights.shape[0], -1)
        return np.moveaxis(weights, self.axis, -1).reshape(-1, weights.shape[self.axis])

    def grid(self, grid: QuantGrid | None) -> QuantGrid | None:
        """A weight's quantization grid laid over this ``(rows, K)`` view."""
        if grid is None:
            return None
        scale = self.rows(np.broadcast_to(grid.scale, self.shape))
        zero = self.rows(np.broadcast_to(grid.zero_point, self.shape))
        return QuantGrid(grid.dtype, scale, zero, grid.divide)

    def tensor(self, rows: np.ndarray, dtype) -> np.ndarray:
        if self.im2col:
            m, c, kh, kw = self.shape
            array = rows.reshape(m, kh, kw, c).transpose(0, 3, 1, 2)
        else:
            moved = list(self.shape)
            moved.append(moved.pop(self.axis))
            array = np.moveaxis(rows.reshape(moved), -1, self.axis)
        # Casting to a narrower dtype can only add zeros; pruned entries are exact zeros already.
        return np.ascontiguousarray(array).astype(dtype)


#: Largest K for which ``--refit`` solves each row's least-squares problem.
REFIT_MAX_K = 2048


class _Calibrated:
    """Shared by the calibration-aware methods: statistics per weight, the refit, notes for the report.

    Args:
        stats: Per weight, its layer's input statistics.
        refit: After the mask is chosen, refit each row's kept weights by least
            squares on the calibration data (``core.sparsegpt.refit_kept``) where
            the Hessian is there and K <= ``REFIT_MAX_K``.
        damp: Hessian dampening (fraction of its mean diagonal).
    """

    blockwise = False

    def __init__(self, stats: dict[str, LayerStats], *, refit: bool = False, damp: float = 0.01) -> None:
        self.stats = stats
        self.refit = refit
        self.damp = damp
        self.values_kept = self.values_kept and not refit

    def _finish(self, record: WeightRecord, weights: np.ndarray, pruned: np.ndarray, used: str) -> np.ndarray:
        """Apply the refit if asked, and note method, samples and layer output error on the record."""
        stats = self.stats.get(record.name)
        view = _MatrixView.of(weights, record.axis, stats)
        note = {"method": used, "samples": stats.rows if stats else 0, "layer_output_error": None}
        if view is not None:
            w_rows = view.rows(weights)
            p_rows = view.rows(pruned)
            if self.refit:
                if w_rows.shape[1] <= REFIT_MAX_K:
                    p_rows = refit_kept(w_rows, p_rows, stats.hessian, damp=self.damp)
                    grid = view.grid(record.grid)
                    if grid is not None:  # back onto the stored weight's grid: the error below includes it
                        p_rows = grid.round(p_rows)
                    pruned = view.tensor(p_rows, weights.dtype)
                    note["refit"] = True
                else:
                    note["refit"] = f"skipped: K = {w_rows.shape[1]} > {REFIT_MAX_K}"
            note["layer_output_error"] = layer_output_error(w_rows, p_rows, stats.hessian)
        elif self.refit:
            note["refit"] = "skipped: no Hessian for this layer"
        record.calibration = note
        return pruned


class WandaMethod(_Calibrated):
    """Keep the 2 of every 4 with the largest ``|w| * ||X_j||`` (Wanda); kept values unchanged (unless refit).

    Weights whose layer input was not captured (inside a subgraph or function)
    fall back to magnitude, which the report says.
    """

    name = "wanda"
    values_kept = True

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        stats = self.stats.get(record.name)
        if stats is None:
            pruned = prune_24_dense(weights, record.axis, out=out)
            return self._finish(record, weights, pruned, "magnitude (no calibration activations reach this layer)")
        if not np.isfinite(weights).all():
            return "contains NaN or Inf"
        importance = wanda_importance(weights, stats.sq_norm, record.axis)
        pruned = prune_24_dense(weights, record.axis, importance, out=out)
        return self._finish(record, weights, pruned, "wanda")


class SparseGPTMethod(_Calibrated):
    """SparseGPT: 2:4 masks chosen and kept weights updated from ``H = X^T X``.

    MatMul/Gemm weights, and 2-D ungrouped Conv weights through the im2col view.
    Weights without a Hessian (grouped or 1-D/3-D Conv, K over 8192) are pruned
    with Wanda; those with no captured input with magnitude; the report says which.
    """

    name = "sparsegpt"
    values_kept = False

    def __init__(self, stats: dict[str, LayerStats], damp: float = 0.01, *, refit: bool = False) -> None:
        super().__init__(stats, refit=refit, damp=damp)
        self.wanda = WandaMethod(stats, refit=refit, damp=damp)

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        stats = self.stats.get(record.name)
        view = _MatrixView.of(weights, record.axis, stats)
        if view is None:
            pruned = self.wanda.prune(record, weights, out)
            if not isinstance(pruned, str) and stats is not None:
                record.calibration["method"] = "wanda (no Hessian for SparseGPT on this layer)"
            return pruned
        if not np.isfinite(weights).all():
            return "contains NaN or Inf"
        rows = sparsegpt_24(view.rows(weights), stats.hessian, damp=self.damp, grid=view.grid(record.grid))
        used = "sparsegpt (im2col)" if view.im2col else "sparsegpt"
        return self._finish(record, weights, view.tensor(rows, weights.dtype), used)


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


class SequentialMethod:
    """Wanda or SparseGPT, each layer calibrated on the model as already pruned before it.

    SparseGPT's recipe: layers are pruned in graph order, and each one's input
    statistics are captured from the model in which every earlier layer is
    already pruned, so later layers compensate for the error of earlier ones.
    Costs one onnxruntime session per layer.
    """

    blockwise = False
    sequential = True

    def __init__(
        self, name: str, model, feeds: list[dict[str, np.ndarray]], damp: float = 0.01, *, refit: bool = False
    ) -> None:
        self.name = name
        self.values_kept = name == "wanda" and not refit
        self.model = model
        self.feeds = feeds
        self.damp = damp
        self.refit = refit

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | str:
        from .capture import collect_stats

        stats = collect_stats(self.model, [record], self.feeds, hessian=self.name == "sparsegpt" or self.refit)
        if self.name == "wanda":
            inner = WandaMethod(stats, refit=self.refit, damp=self.damp)
        else:
            inner = SparseGPTMethod(stats, damp=self.damp, refit=self.refit)
        pruned = inner.prune(record, weights, out)
        if record.calibration is not None:
            record.calibration["sequential"] = True
        return pruned
