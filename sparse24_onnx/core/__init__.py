"""NumPy core of sparse24-onnx: 2:4 pruning, compression and metrics.

Knows nothing of ONNX; imports only NumPy.
"""

from .matmul import sparse_matmul
from .metrics import PruneMetrics, compute_metrics
from .sparse24 import (
    Sparse24Tensor,
    count_dense_groups,
    decompress,
    is_24,
    keep_mask,
    magnitude_key,
    prune_24,
    prune_24_gradient,
    prune_24_magnitude,
)

__all__ = [
    "PruneMetrics",
    "Sparse24Tensor",
    "compute_metrics",
    "count_dense_groups",
    "decompress",
    "is_24",
    "keep_mask",
    "magnitude_key",
    "prune_24",
    "prune_24_gradient",
    "prune_24_magnitude",
    "sparse_matmul",
]
