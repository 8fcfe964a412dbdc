"""Mask and apply: prune to 2:4 straight into a dense array."""

from __future__ import annotations

import numpy as np

from .sparse24 import (
    GROUP,
    Scratch,
    _bits,
    _check_importance,
    _chunk_rows,
    _grouped,
    _keep_masks,
    _negative_zero,
    _normalize_axis,
    _score_chunk,
    decompress,
    prune_24,
)

__all__ = ["prune_24_dense"]


def prune_24_dense(
    weights: np.ndarray, axis: int, importance: np.ndarray | None = None, *, out: np.ndarray | None = None
) -> np.ndarray:
    """The dense 2:4-pruned tensor: kept elements bit-identical (-0.0 becomes +0.0), pruned elements +0.

    The same selection as :func:`~sparse24_onnx.core.prune_24` (the 2 highest
    importance per group, ties to the lower index; ``importance=None`` ranks by
    ``|weights|``), written straight into a dense array without building the
    compressed form.  This is the layout TensorRT reads.  Memory beyond the input
    and the output stays a few MiB: the work goes in cache-sized chunks.

    Args:
        weights: Dense tensor, any shape with at least one dimension.
        axis: Axis along which groups of 4 consecutive elements are formed.
        importance: Optional scores of the same shape (see ``prune_24``).
        out: Optional C-contiguous array of the weights' shape and dtype to write
            the result into (a buffer reused across calls avoids fresh pages).
    """
    weights = np.asarray(weights)
    axis = _normalize_axis(axis, weights.ndim)
    importance = None if importance is None else np.asarray(importance)
    _check_importance(weights, importance)
    if out is not None and (out.shape != weights.shape or out.dtype != weights.dtype or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous {weights.dtype} array of shape {weights.shape}")
    if weights.shape[axis] % GROUP or weights.size == 0:  # padded groups: the general route
        result = decompress(prune_24(weights, importance, axis))
        if out is None:
            return result
        out[...] = result
        return out
    x, score = _grouped(weights, importance, axis)
    rows, _, post = x.shape
    bits = _bits(x)
    dense = np.empty(weights.shape, dtype=weights.dtype) if out is None else out
    out = _bits(dense.reshape(x.shape))
    negative_zero = _negative_zero(weights.dtype)
    scratch, keep_scratch = Scratch(), Scratch()
    for sl in _chunk_rows(rows, post):
        b = bits[sl]
        # The four masks go into one (rows, 4, post) array so that a single multiply
        # applies them: four multiplies over strided members are slow on short rows.
        keep = keep_scratch.array(b.shape, np.bool_)
        for q, k in enumerate(_keep_masks(_score_chunk(x, score, sl, scratch))):
            keep[:, q] = k
        if negative_zero is not None:  # a kept -0.0 is written as +0.0 (see _drop_negative_zero)
            keep &= b != negative_zero
        np.multiply(b, keep, out=out[sl])
    return dense
