"""NumPy core of sparse24-onnx: 2:4 pruning, compression and metrics.

Knows nothing of ONNX; imports only NumPy.
"""

from .dense import prune_24_dense
from .matmul import sparse_matmul
from .metrics import DenseMetrics, PruneMetrics, compute_metrics, compute_metrics_dense
from .sparse24 import (
    Sparse24Tensor,
    count_dense_groups,
    decompress,
    gradient_importance,
    is_24,
    keep_mask,
    magnitude_key,
    prune_24,
    prune_24_gradient,
    prune_24_magnitude,
)

__all__ = [
    "DenseMetrics",
    "PruneMetrics",
    "Sparse24Tensor",
    "compute_metrics",
    "compute_metrics_dense",
    "count_dense_groups",
    "decompress",
    "gradient_importance",
    "is_24",
    "keep_mask",
    "magnitude_key",
    "prune_24",
    "prune_24_dense",
    "prune_24_gradient",
    "prune_24_magnitude",
    "sparse_matmul",
]
