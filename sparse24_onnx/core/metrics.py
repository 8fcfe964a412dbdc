"""How good a 2:4 pruning decision was: the ``PruneMetrics`` of a pruned tensor."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from .sparse24 import (
    GROUP,
    Scratch,
    Sparse24Tensor,
    _bits,
    _is_float,
    _normalize_axis,
    decompress,
    keep_mask,
    magnitude_key,
)

__all__ = ["DenseMetrics", "PruneMetrics", "compute_metrics", "compute_metrics_dense"]

#: Elements per chunk in :func:`compute_metrics_dense`.
_CHUNK = 1 << 17


@dataclass(frozen=True)
class PruneMetrics:
    """Quality of one tensor's pruning.

    Attributes:
        pruned_count: Elements set to zero by pruning (positions not kept).
        total_count: Elements of the dense tensor.
        approximation_error: Mean absolute difference between the original and
            the pruned dense tensor (L1 error per element), in the weights' units.
        kept_magnitude_mean: Mean ``|w|`` of the original values at the kept positions.
        pruned_magnitude_mean: Mean ``|w|`` of the original values at the pruned
            positions; far below ``kept_magnitude_mean`` means good decisions.
    """

    pruned_count: int
    total_count: int
    approximation_error: float
    kept_magnitude_mean: float
    pruned_magnitude_mean: float

    def as_dict(self) -> dict[str, float | int]:
        """The fields as a plain dict (for JSON reports)."""
        return asdict(self)


def compute_metrics(original: np.ndarray, sparse: Sparse24Tensor) -> PruneMetrics:
    """Measure ``sparse`` against the dense ``original`` it was pruned from.

    Magnitudes are computed in float64.  Methods that update the kept values
    (SparseGPT) change ``approximation_error`` but not the kept/pruned means,
    which describe the choice of positions on the original weights.
    """
    original = np.asarray(original)
    if tuple(original.shape) != sparse.shape:
        raise ValueError(f"original has shape {original.shape}, sparse tensor {sparse.shape}")
    total = sparse.num_elements
    if total == 0:
        return PruneMetrics(0, 0, 0.0, 0.0, 0.0)
    magnitude = np.abs(original.astype(np.float64))
    kept = keep_mask(sparse)
    kept_count = int(np.count_nonzero(kept))
    pruned_count = total - kept_count
    kept_sum = float(magnitude[kept].sum())
    pruned_sum = float(magnitude.sum()) - kept_sum
    error = np.abs(decompress(sparse).astype(np.float64) - original.astype(np.float64))
    return PruneMetrics(
        pruned_count=pruned_count,
        total_count=total,
        approximation_error=float(error.mean()),
        kept_magnitude_mean=kept_sum / kept_count if kept_count else 0.0,
        pruned_magnitude_mean=max(pruned_sum, 0.0) / pruned_count if pruned_count else 0.0,
    )


class DenseMetrics:
    """Accumulates :class:`PruneMetrics` over blocks of a dense-pruned tensor.

    2:4 pruning zeroes exactly 2 of every 4 positions, so ``pruned_count`` is half
    the elements; a position counts as kept where the pruned value is non-zero.
    For methods that keep the kept values as they were (magnitude, gradient,
    Wanda) the figures equal those of :func:`compute_metrics` on the compressed
    form; for a method that updates them, a kept value updated to exactly 0
    would count as pruned.  Kept and pruned magnitudes are summed separately
    (never one as a difference of totals), in chunks, pairwise in float32
    (float64 for float64 weights), accumulated in float64; a tensor can be fed
    block by block as it streams through.
    """

    def __init__(self) -> None:
        self.total = 0
        self.kept_sum = self.pruned_sum = self.error_sum = 0.0
        self._scratch = Scratch()

    def add(self, original: np.ndarray, pruned: np.ndarray, *, values_kept: bool = False) -> None:
        """Account for one block (any shape, the same for both; whole groups of 4).

        Args:
            values_kept: The method leaves kept values as they were (magnitude,
                gradient, Wanda): then the bits of ``w XOR w'`` are ``w`` where pruned
                and 0 where kept, and ``|w - w'|`` sums to the pruned magnitude.
        """
        if original.shape != pruned.shape:
            raise ValueError(f"original has shape {original.shape}, pruned {pruned.shape}")
        flat_original, flat_pruned = original.reshape(-1), pruned.reshape(-1)
        exact = values_kept and _is_float(original.dtype) and original.dtype == pruned.dtype
        compute = np.float64 if np.float64 in (original.dtype, pruned.dtype) else np.float32
        for start in range(0, flat_original.size, _CHUNK):
            a = flat_original[start : start + _CHUNK]
            d = flat_pruned[start : start + _CHUNK]
            if exact:
                work = self._scratch.array(a.shape, f"u{a.dtype.itemsize}")
                kept = _magnitude_sum(d, work)
                dropped = _magnitude_sum(np.bitwise_xor(_bits(a), _bits(d), out=work).view(a.dtype), work)
                self.kept_sum += kept
                self.pruned_sum += dropped
                self.error_sum += dropped
                continue
            a = np.abs(a.astype(compute))
            d = d.astype(compute)
            nonzero = d != 0
            self.kept_sum += float(np.add.reduce(a * nonzero, dtype=np.float64))
            self.pruned_sum += float(np.add.reduce(a * ~nonzero, dtype=np.float64))
            self.error_sum += float(np.add.reduce(np.abs(flat_original[start : start + _CHUNK].astype(compute) - d)))
        self.total += original.size

    @property
    def finite(self) -> bool:
        """False when the original held NaN or Inf (its magnitude sums are then not finite)."""
        return math.isfinite(self.kept_sum + self.pruned_sum)

    def result(self) -> PruneMetrics:
        if self.total == 0:
            return PruneMetrics(0, 0, 0.0, 0.0, 0.0)
        pruned_count = self.total // 2
        return PruneMetrics(
            pruned_count=pruned_count,
            total_count=self.total,
            approximation_error=self.error_sum / self.total,
            kept_magnitude_mean=self.kept_sum / (self.total - pruned_count),
            pruned_magnitude_mean=self.pruned_sum / pruned_count,
        )


#: float32 value of every float16 magnitude bit pattern (NumPy's own float16 casts are slow).
_FLOAT16_MAGNITUDES = np.arange(0x8000, dtype=np.uint16).view(np.float16).astype(np.float32)


def _magnitude_sum(chunk: np.ndarray, work: np.ndarray | None = None) -> float:
    """``sum(|chunk|)``: floats through their magnitude bits, summed pairwise in float32 (float64 for float64).

    ``work``: an unsigned array of the chunk's shape and item size to use as
    scratch (it may be ``chunk``'s own bits).
    """
    if chunk.dtype == np.float16:
        return float(np.add.reduce(_FLOAT16_MAGNITUDES.take(magnitude_key(chunk, out=work))))
    if _is_float(chunk.dtype):
        accumulate = np.float64 if chunk.dtype == np.float64 else np.float32
        return float(np.add.reduce(magnitude_key(chunk, out=work).view(chunk.dtype), dtype=accumulate))
    return float(np.add.reduce(np.abs(chunk.astype(np.float64))))


def compute_metrics_dense(original: np.ndarray, pruned: np.ndarray, axis: int) -> PruneMetrics:
    """:func:`compute_metrics` for a dense pruned tensor (see :class:`DenseMetrics`).

    Raises:
        ValueError: The shapes differ, or ``shape[axis]`` is not a multiple of 4.
    """
    original = np.asarray(original)
    pruned = np.asarray(pruned)
    axis = _normalize_axis(axis, original.ndim)
    if original.shape[axis] % GROUP:
        raise ValueError("compute_metrics_dense needs an axis length that is a multiple of 4")
    metrics = DenseMetrics()
    metrics.add(original, pruned)
    return metrics.result()
