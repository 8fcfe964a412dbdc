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

Block level: where the layer's output (after a bias) is added to a residual stream ``R`` that
the earlier layers moved too (``R~``), what the next layers see is ``X~ W'^T + R~``, and the
dense model's is ``X W^T + R``; the target becomes ``X W^T + E`` with ``E = R - R~``, so that
the layer also undoes what the residual path carries.  It adds ``G = X~^T E`` to the right-hand
side (``(H~ + l I) W*^T = C W^T + G + l W^T``) and ``F = X^T E``, ``||E||^2`` to the error
(:class:`Residual`).

Weights are ``(rows, K)``; ``H~``, ``C`` and ``H = X^T X`` are ``(K, K)``; ``G`` and ``F`` are
``(K, rows)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Residual", "corrected_target", "paired_output_error"]


class Residual(NamedTuple):
    """The residual stream's error ``E = R - R~`` as the fit needs it: ``G = X~^T E``, ``F = X^T E``
    (``(K, rows)``) and each output's ``||E_j||^2`` (``(rows,)``)."""

    g: np.ndarray
    f: np.ndarray
    sq_norms: np.ndarray


def corrected_target(
    weights: np.ndarray, h_pruned: np.ndarray, cross: np.ndarray, damp: float, residual: Residual | None = None
) -> np.ndarray:
    """``W*``: the dense weights that best reproduce ``X W^T`` (plus ``E`` with ``residual``) from ``X~``
    (float64, ``(rows, K)``).

    ``damp`` (a fraction of ``H~``'s mean diagonal, as the solvers take it) pulls ``W*`` towards ``W``.
    """
    h = np.array(h_pruned, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    amount = damp * float(np.mean(np.diag(h))) + 1e-12
    h[np.diag_indices(h.shape[0])] += amount
    right = np.asarray(cross, dtype=np.float64) @ w.T + amount * w.T  # C W^T + l W^T: dampened towards W
    if residual is not None:
        right += np.asarray(residual.g, dtype=np.float64)
    return np.linalg.solve(h, right).T


def paired_output_error(
    weights: np.ndarray,
    pruned: np.ndarray,
    h_pruned: np.ndarray,
    cross: np.ndarray,
    h_dense: np.ndarray,
    residual: Residual | None = None,
) -> float:
    """``||X~ W'^T - X W^T|| / ||X W^T||`` from the three products (see the module docstring); with
    ``residual``, ``||X~ W'^T - X W^T - E|| / ||X W^T||``."""
    w = np.asarray(weights, dtype=np.float64)
    q = np.asarray(pruned, dtype=np.float64)
    reference = float(np.sum((w @ np.asarray(h_dense, dtype=np.float64)) * w))
    own = float(np.sum((q @ np.asarray(h_pruned, dtype=np.float64)) * q))
    both = float(np.sum((q @ np.asarray(cross, dtype=np.float64)) * w))
    change = own - 2 * both + reference
    if residual is not None:  # - 2 <X~ W'^T, E> + 2 <X W^T, E> + ||E||^2
        g, f = np.asarray(residual.g, dtype=np.float64), np.asarray(residual.f, dtype=np.float64)
        change += -2 * float(np.sum(q * g.T)) + 2 * float(np.sum(w * f.T)) + float(np.sum(residual.sq_norms))
    if reference <= 0:
        return 0.0 if change <= 0 else float("inf")
    return float(np.sqrt(max(change, 0.0) / reference))
