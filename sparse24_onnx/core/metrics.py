"""How good a 2:4 pruning decision was: the ``PruneMetrics`` of a pruned tensor."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .sparse24 import Sparse24Tensor, decompress, keep_mask

__all__ = ["PruneMetrics", "compute_metrics"]


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
