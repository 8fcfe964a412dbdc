"""Error-correcting layer targets: fit a layer on the pruned model's input to the dense model's output.

With the layers before it already pruned, a layer sees ``X~`` instead of the dense model's
``X``.  Fitting its 2:4 weights ``W'`` to ``||X~ W'^T - X W^T||`` (GPTAQ's asymmetric
objective) instead of ``||X~ W'^T - X~ W^T||`` asks it to undo what the earlier layers broke.
The objective is ``||X~ (W' - W*)^T||^2`` plus a constant, where ``W*`` is the least-squares
dense weight on the pruned input, ``H~ W*^T = C W^T`` (``H~ = X~^T X~``, ``C = X~^T X``): so any
method that fits ``W'`` to a target under ``H~`` (SparseGPT's sweep, ADMM) takes ``W*`` as its
target unchanged.  From few calibration rows ``W*`` is dampened towards ``W`` (not towards 0):
``(H~ + l I) W*^T = C W^T + l W^T``, which gives ``W`` itself as ``l`` grows (measured on the
captcha CRNN: 0.1805 held-out error against 0.1836 dampened towards 0).

Weights are ``(rows, K)``; ``H~``, ``C`` and ``H = X^T X`` are ``(K, K)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["corrected_target", "paired_output_error"]


def corrected_target(weights: np.ndarray, h_pruned: np.ndarray, cross: np.ndarray, damp: float) -> np.ndarray:
    """``W*``: the dense weights that best reproduce ``X W^T`` from ``X~`` (float64, ``(rows, K)``).

    ``damp`` (a fraction of ``H~``'s mean diagonal, as the solvers take it) pulls ``W*`` towards ``W``.
    """
    h = np.array(h_pruned, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    amount = damp * float(np.mean(np.diag(h))) + 1e-12
    h[np.diag_indices(h.shape[0])] += amount
    right = np.asarray(cross, dtype=np.float64) @ w.T + amount * w.T  # C W^T + l W^T: dampened towards W
    return np.linalg.solve(h, right).T


def paired_output_error(
    weights: np.ndarray, pruned: np.ndarray, h_pruned: np.ndarray, cross: np.ndarray, h_dense: np.ndarray
) -> float:
    """``||X~ W'^T - X W^T|| / ||X W^T||`` from the three products (see the module docstring)."""
    w = np.asarray(weights, dtype=np.float64)
    q = np.asarray(pruned, dtype=np.float64)
    reference = float(np.sum((w @ np.asarray(h_dense, dtype=np.float64)) * w))
    own = float(np.sum((q @ np.asarray(h_pruned, dtype=np.float64)) * q))
    both = float(np.sum((q @ np.asarray(cross, dtype=np.float64)) * w))
    change = own - 2 * both + reference
    if reference <= 0:
        return 0.0 if change <= 0 else float("inf")
    return float(np.sqrt(max(change, 0.0) / reference))
