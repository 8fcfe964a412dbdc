"""ADMM 2:4 pruning of a weight matrix: the mask chosen gradually and the kept weights solved for.

The layer-wise problem: for weights ``W`` ``(rows, K)`` and the layer input's
``H = X^T X`` ``(K, K)``, find ``W'`` that is 2:4 along K and minimises the change of
the layer's output, ``||X (W' - W)^T||^2 = tr((W' - W) H (W' - W)^T)``.

ADMM splits it into a least-squares step and a projection onto 2:4 matrices
(Boža, "Fast and Effective Weight Update for Pruned Large Language Models",
TMLR 2024), with ``rho`` the penalty, ``Z`` the sparse copy and ``U`` the scaled
dual variable::

    W' <- (W H + rho (Z - U)) (H + rho I)^-1       one factorisation of H + rho I, reused
    Z  <- 2:4 projection of (W' + U)               masks chosen by |W' + U|
    U  <- U + W' - Z

Features are first scaled to unit ``diag(H)`` (so ``|W' + U|`` weighs each weight by
its input's size, as Wanda does, and ``rho = 1`` suits every layer), and ``H`` is
dampened by ``damp`` times its mean diagonal.  The mask is not fixed at once:
during the first ``gradual`` iterations the share of pruned weights grows along a
cubic schedule to one half (in each group of 4 the two largest of ``|W' + U|`` are
always kept; of the other two, the smallest across the matrix are pruned first),
then the mask is fixed and the remaining iterations (15 of the 30) refine the kept weights towards
their least-squares values, the weight update of Boža's paper.
Each iteration is one matrix product (float32) and a projection.
"""

from __future__ import annotations

import numpy as np

from .dense import prune_24_dense
from .quantized import QuantGrid

__all__ = ["admm_24", "gradual_share"]


def gradual_share(iteration: int, gradual: int) -> float:
    """Share of all weights pruned after ``iteration`` (0-based) of ``gradual``: cubic, to 0.5."""
    if iteration + 1 >= gradual:
        return 0.5
    return 0.5 - 0.5 * (1.0 - (iteration + 1) / gradual) ** 3


def _mask(values: np.ndarray, share: float) -> np.ndarray:
    """Kept positions: in each group of 4 along axis 1 the top 2 of ``|values|``, plus the largest others.

    Exactly ``share * values.size`` positions are pruned, all among each group's
    two smaller entries (at ``share = 0.5``: exactly 2:4).
    """
    scores = np.abs(values)
    kept = prune_24_dense(np.ones(scores.shape, dtype=np.float32), 1, scores) != 0
    count = round(share * values.size)
    others = np.flatnonzero(~kept)
    if count >= others.size:
        return kept
    mask = np.ones_like(kept)
    if count > 0:
        smallest = others[np.argpartition(scores.reshape(-1)[others], count - 1)[:count]]
        mask.reshape(-1)[smallest] = False
    return mask


def admm_24(
    weights: np.ndarray,
    hessian: np.ndarray,
    *,
    damp: float = 0.1,
    rho: float = 1.0,
    iterations: int = 30,
    gradual: int = 15,
    grid: QuantGrid | None = None,
) -> np.ndarray:
    """ADMM 2:4 pruning of ``weights`` ``(rows, K)`` given ``H = X^T X`` ``(K, K)`` (see the module docstring).

    Returns the pruned weights (float64), exactly 2:4 along axis 1.  With ``grid``
    (a quantization grid over the ``(rows, K)`` matrix) the kept weights are rounded
    onto it at the end.
    """
    w = np.asarray(weights, dtype=np.float64)
    k = w.shape[1]
    if k % 4:
        raise ValueError(f"K = {k} is not a multiple of 4")
    h = np.array(hessian, dtype=np.float64)
    norm = np.sqrt(np.maximum(np.diag(h), 0.0)) + 1e-8
    h /= norm[:, None]
    h /= norm[None, :]
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    scaled = w * norm
    target = (scaled @ h).astype(np.float32)  # W H, the data term of the least-squares step
    h[np.diag_indices(k)] += rho
    # (H + rho I)^-1: with unit diagonal and rho = 1 it is well conditioned, so float32 (BLAS's
    # fastest, for the inverse and the iterations' products) rounds far below what separates two masks.
    inverse = np.linalg.inv(h.astype(np.float32))
    current, dual = scaled.astype(np.float32), np.zeros(scaled.shape, dtype=np.float32)
    rho = np.float32(rho)
    mask = None
    for iteration in range(iterations):
        if iteration < gradual or mask is None:
            mask = _mask(current + dual, gradual_share(iteration, gradual))
        sparse = (current + dual) * mask
        dual += current - sparse
        current = (target + rho * (sparse - dual)) @ inverse
    mask = _mask(current + dual, 0.5) if mask is None or mask.mean() > 0.5 else mask
    result = (current + dual).astype(np.float64) * mask / norm
    if grid is not None:
        result = grid.broadcast(result.shape).round(result) * mask
    return result
