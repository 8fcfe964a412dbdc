"""Matrix product with a 2:4 compressed left operand, computed from the compressed form."""

from __future__ import annotations

import numpy as np

from .sparse24 import GROUP, KEEP, Sparse24Tensor

__all__ = ["sparse_matmul"]

# Upper bound on the gathered block of B rows held at once (bytes).
_BLOCK_BYTES = 64 << 20


def sparse_matmul(sparse_a: Sparse24Tensor, dense_b: np.ndarray) -> tuple[np.ndarray, float]:
    """``A @ B`` for a 2:4 ``A`` of shape ``(M, K)`` pruned along K (axis 1).

    Only the kept values of ``A`` are multiplied: for every row and group, the 2
    rows of ``B`` at the kept positions are gathered and weighted, which is the
    work a Sparse Tensor Core does.  float16 and bfloat16 accumulate in float32;
    the result has NumPy's result dtype of the two operands.

    Args:
        sparse_a: Compressed ``(M, K)`` tensor with ``axis == 1``.
        dense_b: ``(K, N)`` or ``(K,)`` array.

    Returns:
        ``(A @ B, theoretical_speedup)``, the speedup being the ratio of the dense
        product's multiply-adds to those performed here (2.0 when K is a
        multiple of 4).
    """
    if len(sparse_a.shape) != 2 or sparse_a.axis != 1:
        raise ValueError(
            "sparse_matmul needs a 2-D sparse operand pruned along its last axis (K of M x K); "
            f"got shape {sparse_a.shape} pruned along axis {sparse_a.axis}"
        )
    b = np.asarray(dense_b)
    vector = b.ndim == 1
    if vector:
        b = b[:, None]
    m, k = sparse_a.shape
    if b.ndim != 2 or b.shape[0] != k:
        raise ValueError(f"cannot multiply a sparse ({m}, {k}) matrix by an array of shape {np.shape(dense_b)}")
    out_dtype = np.result_type(sparse_a.values.dtype, b.dtype)
    compute = np.promote_types(out_dtype, np.float32) if out_dtype.itemsize < 4 else out_dtype
    n = b.shape[1]
    codes = sparse_a.codes()[:, :, 0]  # (M, G)
    groups = codes.shape[1]
    padded = np.zeros((groups * GROUP, n), dtype=compute)
    padded[:k] = b
    base = np.arange(groups, dtype=np.intp) * GROUP
    values = sparse_a.values.astype(compute).reshape(m, groups, KEEP)
    result = np.empty((m, n), dtype=compute)
    rows = max(1, _BLOCK_BYTES // max(1, groups * n * compute.itemsize))
    for start in range(0, m, rows):
        stop = min(start + rows, m)
        block = codes[start:stop]
        low = padded[base + (block & 3)]  # (rows, G, N): B rows at each group's first kept position
        high = padded[base + (block >> 2)]
        result[start:stop] = np.einsum("rg,rgn->rn", values[start:stop, :, 0], low)
        result[start:stop] += np.einsum("rg,rgn->rn", values[start:stop, :, 1], high)
    speedup = k / (KEEP * groups) if groups else 1.0
    out = result.astype(out_dtype, copy=False)
    return (out[:, 0] if vector else out), float(speedup)
