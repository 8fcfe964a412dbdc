"""2:4 structured sparsity on NumPy arrays: prune, compress, decompress, check.

A tensor is 2:4 sparse along ``axis`` when every group of 4 consecutive elements
along that axis holds at least 2 zeros.  This is the pattern NVIDIA Sparse Tensor
Cores (Ampere and later) skip; for a weight it must run along the reduction axis
(K) of the matrix product the weight takes part in.

Every function here works on whole arrays at once: the tensor is viewed as
``(pre, G, 4, post)`` where ``pre`` is the product of the dimensions before
``axis``, ``G`` the number of groups along it and ``post`` the product of the
dimensions after it, so the 4 members of every group are 4 slabs of one view and
no data is transposed or looped over per group.

Compressed layout (:class:`Sparse24Tensor`)
-------------------------------------------
``values``
    The kept values, original dtype, shape equal to ``shape`` with
    ``shape[axis]`` replaced by ``2 * G``; along ``axis`` group ``g`` contributes
    ``values[..., 2g, ...]`` (the kept element at the lower position) and
    ``values[..., 2g + 1, ...]`` (the kept element at the higher position).
``metadata``
    ``uint8`` array of ``ceil(num_groups / 2)`` bytes.  Group ``i`` (groups
    numbered in C order over ``shape`` with ``shape[axis]`` replaced by ``G``)
    has the 4-bit code ``p0 | p1 << 2`` (``0 <= p0 < p1 <= 3`` the kept
    positions inside the group) in byte ``i // 2``, low nibble for even ``i``,
    high nibble for odd ``i``.  An unused last nibble is 0.
``G = ceil(shape[axis] / 4)``
    An axis length that is not a multiple of 4 is padded with zeros at its end;
    padding never wins a place over a real element, and :func:`decompress` drops
    it again, so the round trip is exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

__all__ = [
    "Sparse24Tensor",
    "count_dense_groups",
    "decompress",
    "gradient_importance",
    "is_24",
    "keep_mask",
    "magnitude_key",
    "prune_24",
    "prune_24_gradient",
    "prune_24_magnitude",
]

GROUP = 4
KEEP = 2

# code p0 | p1 << 2 -> 4-bit keep mask (bit q set when position q is kept); 0 for invalid codes.
_CODE_TO_MASK = np.zeros(16, dtype=np.uint8)
for _p0 in range(GROUP):
    for _p1 in range(_p0 + 1, GROUP):
        _CODE_TO_MASK[_p0 | (_p1 << 2)] = (1 << _p0) | (1 << _p1)
del _p0, _p1


def _invalid_codes(codes: np.ndarray) -> int:
    """How many 4-bit group codes are not ``p0 | p1 << 2`` with ``p0 < p1``."""
    return int(np.count_nonzero(_CODE_TO_MASK[codes] == 0))


def _is_float(dtype: np.dtype) -> bool:
    """True for sign-magnitude binary floats: NumPy's own, ml_dtypes' bfloat16 and float8 types."""
    return dtype.kind == "f" or dtype.name == "bfloat16" or dtype.name.startswith("float8")


def _normalize_axis(axis: int, ndim: int) -> int:
    if ndim == 0:
        raise ValueError("a 0-d array has no axis to form groups of 4 along")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for an array with {ndim} dimensions")
    return axis % ndim


def _group_view(array: np.ndarray, axis: int, fill) -> np.ndarray:
    """View ``array`` as ``(pre, G, 4, post)``, padding ``axis`` to a multiple of 4 with ``fill``.

    No copy is made when the axis length is already a multiple of 4 and the
    array is C-contiguous.
    """
    shape = array.shape
    length = shape[axis]
    pre = int(np.prod(shape[:axis], dtype=np.int64))
    post = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    view = np.ascontiguousarray(array).reshape(pre, length, post)
    pad = (-length) % GROUP
    if pad:
        view = np.concatenate([view, np.full((pre, pad, post), fill, dtype=array.dtype)], axis=1)
    return view.reshape(pre, (length + pad) // GROUP, GROUP, post)


def _group_count(shape: tuple[int, ...], axis: int) -> int:
    return -(-shape[axis] // GROUP)


def magnitude_key(weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """An array that orders like ``abs(weights)``, computed without arithmetic.

    For IEEE floats (float16, bfloat16, float32, float64) clearing the sign bit of
    the bit pattern and reading it as an unsigned integer orders exactly like
    the magnitude (NaN orders above inf); read back as the float type, it *is*
    the magnitude.  For integers it is ``abs`` in a wider type so that the most
    negative value does not overflow.

    Args:
        weights: Any array.
        out: For floats, an unsigned array of the same shape and item size to
            write into (reusing a buffer spares fresh pages in hot loops).
    """
    weights = np.asarray(weights)
    if _is_float(weights.dtype):
        uint = np.dtype(f"u{weights.dtype.itemsize}")
        sign = np.array(1 << (8 * weights.dtype.itemsize - 1), dtype=uint)
        return np.bitwise_and(weights.view(uint), ~sign, out=out)
    if weights.dtype.kind in "iu":
        return np.abs(weights.astype(np.int64))
    raise TypeError(f"cannot rank elements of dtype {weights.dtype} by magnitude")


@dataclass(frozen=True, eq=False)
class Sparse24Tensor:
    """A tensor pruned to 2:4 along ``axis``, stored as kept values plus positions.

    Attributes:
        values: The kept values, 2 per group of 4, original dtype; shape is
            ``shape`` with ``shape[axis]`` replaced by ``2 * ceil(shape[axis] / 4)``.
        metadata: ``uint8``, the 4-bit code ``p0 | p1 << 2`` of every group, two
            groups per byte, low nibble first (see the module docstring).
        shape: The dense shape.
        axis: The axis the groups of 4 run along, non-negative.
    """

    values: np.ndarray
    metadata: np.ndarray
    shape: tuple[int, ...]
    axis: int

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        axis = _normalize_axis(self.axis, len(shape))
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "axis", axis)
        expected = list(shape)
        expected[axis] = KEEP * _group_count(shape, axis)
        if tuple(self.values.shape) != tuple(expected):
            raise ValueError(
                f"values have shape {tuple(self.values.shape)}, expected {tuple(expected)} "
                f"for dense shape {shape} grouped along axis {axis}"
            )
        n_groups = self.num_elements // shape[axis] * _group_count(shape, axis) if shape[axis] else 0
        if self.metadata.dtype != np.uint8 or self.metadata.shape != ((n_groups + 1) // 2,):
            raise ValueError(
                f"metadata must be a uint8 vector of {(n_groups + 1) // 2} bytes for "
                f"{n_groups} groups, got {self.metadata.dtype} {self.metadata.shape}"
            )

    @property
    def dtype(self) -> np.dtype:
        """The element type of the dense tensor (and of ``values``)."""
        return self.values.dtype

    @property
    def num_elements(self) -> int:
        """Number of elements of the dense tensor (padding excluded)."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def num_groups(self) -> int:
        """Number of groups of 4, a partial group at the end of the axis included."""
        if self.shape[self.axis] == 0:
            return 0
        return self.num_elements // self.shape[self.axis] * _group_count(self.shape, self.axis)

    @property
    def memory_bytes(self) -> int:
        """Bytes of the compressed form: kept values plus metadata."""
        return int(self.values.nbytes + self.metadata.nbytes)

    @cached_property
    def sparsity_percent(self) -> float:
        """Percentage of the dense tensor's elements that are zero, as measured.

        At least 50 for an axis length that is a multiple of 4; more where kept
        values are themselves zero.
        """
        if self.num_elements == 0:
            return 0.0
        nonzero = int(np.count_nonzero(self.values))
        return 100.0 * (self.num_elements - nonzero) / self.num_elements

    def invalid_groups(self) -> int:
        """Groups whose code is not ``p0 | p1 << 2`` with ``p0 < p1`` (0 for a well-formed tensor)."""
        return _invalid_codes(self.codes())

    def codes(self) -> np.ndarray:
        """The 4-bit code of every group, shape ``(pre, G, post)``, ``uint8``."""
        pre = int(np.prod(self.shape[: self.axis], dtype=np.int64))
        post = int(np.prod(self.shape[self.axis + 1 :], dtype=np.int64))
        unpacked = np.empty(self.metadata.size * 2, dtype=np.uint8)
        np.bitwise_and(self.metadata, 0x0F, out=unpacked[0::2])
        np.right_shift(self.metadata, 4, out=unpacked[1::2])
        return unpacked[: self.num_groups].reshape(pre, _group_count(self.shape, self.axis), post)


def _pack_codes(codes: np.ndarray) -> np.ndarray:
    """Pack 4-bit codes two per byte, the first of each pair in the low nibble."""
    flat = codes.reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, dtype=np.uint8)])
    packed = np.left_shift(flat[1::2], 4)
    np.bitwise_or(packed, flat[0::2], out=packed)
    return packed


#: Groups of 4 processed at a time: temporaries stay in cache and are reused,
#: and memory beyond the inputs and outputs stays bounded (~a few MiB).
_CHUNK_GROUPS = 1 << 15


def _lowest(dtype: np.dtype):
    """A fill value for padding importance scores that never beats a real element."""
    if _is_float(dtype):
        return -np.inf
    if dtype.kind in "iu":
        return np.iinfo(dtype).min
    raise TypeError(f"importance must be a real number array, got {dtype}")


def _bits(array: np.ndarray) -> np.ndarray:
    """Floats as unsigned integers of the same width (exact selects, no -0.0); others unchanged."""
    if _is_float(array.dtype):
        return array.view(f"u{array.dtype.itemsize}")
    return array


class Scratch:
    """One reusable byte buffer handing out arrays of any shape and dtype.

    Hot loops over chunks reuse its memory instead of allocating fresh arrays,
    whose first touch (page faults) can cost more than the arithmetic.
    """

    def __init__(self) -> None:
        self._buffer = np.empty(0, dtype=np.uint8)

    def array(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self._buffer.nbytes < nbytes:
            self._buffer = np.empty(nbytes, dtype=np.uint8)
        return self._buffer[:nbytes].view(dtype).reshape(shape)


#: Below this many elements per row (``post``), given scores are copied into the
#: member-major layout of :func:`_score_chunk` before comparing.
_SHORT_ROWS = 64


def _score_chunk(x: np.ndarray, score: np.ndarray | None, sl: slice, scratch: Scratch) -> np.ndarray:
    """Scores of one ``(rows, 4, post)`` chunk, as a view whose members ``[:, q]`` are contiguous.

    The magnitude key is written member-major, ``(4, rows, post)``, into scratch and
    returned transposed: each of the six comparisons of :func:`_keep_masks` then
    reads two contiguous arrays.  In the ``(rows, 4, post)`` layout a member is
    strided, which costs most where rows are short (``post`` is 1 for a Gemm
    ``transB=1`` weight, 9 for a 3x3 Conv): there member-major runs ~1.6x faster.
    Given scores are copied the same way when rows are short, else used in place.
    """
    chunk = x[sl] if score is None else score[sl]
    by_member = chunk.transpose(1, 0, 2)
    if score is None and _is_float(chunk.dtype):
        out = scratch.array(by_member.shape, f"u{chunk.dtype.itemsize}")
        return magnitude_key(by_member, out=out).transpose(1, 0, 2)
    if score is None:
        return magnitude_key(chunk)
    if chunk.shape[2] < _SHORT_ROWS:
        out = scratch.array(by_member.shape, chunk.dtype)
        np.copyto(out, by_member)
        return out.transpose(1, 0, 2)
    return chunk


def _negative_zero(dtype: np.dtype) -> np.ndarray | None:
    """The bit pattern of -0.0 for a float dtype (as its unsigned view), else None."""
    if not _is_float(dtype):
        return None
    return np.array(1 << (8 * dtype.itemsize - 1), dtype=f"u{dtype.itemsize}")


def _drop_negative_zero(bits: np.ndarray, negative_zero: np.ndarray) -> None:
    """Turn -0.0 into +0.0 in place: pruned tensors hold only +0 zeros (the same value).

    A kept element that was -0.0 would otherwise survive as -0.0 while the
    compressed format's decompression graph (multiply-add, not a bitwise
    select) rebuilds it as +0.0; with one zero, both stay bit-identical.
    """
    np.multiply(bits, bits != negative_zero, out=bits)


def _keep_masks(score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks ``k0..k3`` of the 2 kept members of every group of a ``(rows, 4, post)`` chunk.

    ``c_ij = s_i >= s_j`` (i < j, so i wins ties) says i outranks j.  Element i is
    kept when fewer than 2 elements outrank it, that is when it outranks at
    least 2 of the other 3 (a majority of 3 comparisons).  With a total order
    exactly 2 are kept, so ``k3`` follows from the other three.
    """
    s0, s1, s2, s3 = score[:, 0], score[:, 1], score[:, 2], score[:, 3]
    c01, c02, c03 = s0 >= s1, s0 >= s2, s0 >= s3
    c12, c13, c23 = s1 >= s2, s1 >= s3, s2 >= s3
    k0 = (c01 & c02) | (c03 & (c01 | c02))
    n01, n02, n12 = ~c01, ~c02, ~c12
    k1 = (n01 & c12) | (c13 & (n01 | c12))
    k2 = (n02 & n12) | (c23 & (n02 | n12))
    k3 = k0 ^ k1 ^ k2
    return k0, k1, k2, k3


def _chunk_rows(rows: int, post: int) -> Iterator[slice]:
    step = max(1, _CHUNK_GROUPS // max(post, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def _grouped(weights: np.ndarray, importance: np.ndarray | None, axis: int):
    """``(rows, 4, post)`` views of the weights' bits and of the scores (None: magnitude)."""
    x = _group_view(weights, axis, 0)
    pre, groups, _, post = x.shape
    x = x.reshape(pre * groups, GROUP, post)
    score = None
    if importance is not None:
        score = _group_view(importance, axis, _lowest(importance.dtype)).reshape(pre * groups, GROUP, post)
    return x, score


def _check_importance(weights: np.ndarray, importance: np.ndarray | None) -> None:
    if importance is None:
        return
    if importance.shape != weights.shape:
        raise ValueError(f"importance has shape {importance.shape}, weights {weights.shape}")
    _lowest(importance.dtype)  # raises for non-numeric scores
    if _is_float(importance.dtype) and np.isnan(importance).any():
        raise ValueError("importance contains NaN; scores must be ordered")


def prune_24(weights: np.ndarray, importance: np.ndarray | None, axis: int) -> Sparse24Tensor:
    """Keep, in every group of 4 along ``axis``, the 2 elements of highest importance.

    This is the one pruning primitive; :func:`prune_24_magnitude`,
    :func:`prune_24_gradient` and calibration-aware methods differ only in the
    importance score they pass.

    Args:
        weights: Dense tensor, any shape with at least one dimension.
        importance: Same shape as ``weights``, any real dtype that compares
            (floats without NaN, or integers); None ranks by ``|weights|``.
            Ties go to the lower index, so the result is deterministic.
        axis: Axis along which groups of 4 consecutive elements are formed.

    Returns:
        The pruned tensor in compressed form; ``decompress`` gives the dense
        pruned tensor (the pruned elements set to zero).  Kept values keep their
        bits, except that a kept -0.0 becomes +0.0.
    """
    weights = np.asarray(weights)
    axis = _normalize_axis(axis, weights.ndim)
    importance = None if importance is None else np.asarray(importance)
    _check_importance(weights, importance)
    x, score = _grouped(weights, importance, axis)
    rows, _, post = x.shape
    bits = _bits(x)
    kept = np.empty((rows, KEEP, post), dtype=weights.dtype)
    kept_bits = _bits(kept)
    codes = np.empty((rows, post), dtype=np.uint8)
    negative_zero = _negative_zero(weights.dtype)
    scratch, member_scratch, kept_scratch = Scratch(), Scratch(), Scratch()
    short = post < _SHORT_ROWS
    for sl in _chunk_rows(rows, post):
        b = bits[sl]
        k0, k1, k2, k3 = _keep_masks(_score_chunk(x, score, sl, scratch))
        if short:  # members and kept pairs contiguous (see _score_chunk), copied in and out once
            by_member = member_scratch.array((GROUP, *b.shape[::2]), b.dtype)
            np.copyto(by_member, b.transpose(1, 0, 2))
            b = by_member.transpose(1, 0, 2)
            pair = kept_scratch.array((KEEP, *b.shape[::2]), b.dtype).transpose(1, 0, 2)
        else:
            pair = kept_bits[sl]
        # The lower kept position is 0, 1 or 2; the higher one 3, 2 or 1.  Exactly
        # one product in each sum is non-zero, so the sums are exact selects.
        not0, not3 = ~k0, ~k3
        take2 = not0 & ~k1
        take1 = not3 & ~k2
        low, high = pair[:, 0], pair[:, 1]
        np.multiply(b[:, 0], k0, out=low)
        low += b[:, 1] * (k1 & not0)
        low += b[:, 2] * take2
        np.multiply(b[:, 3], k3, out=high)
        high += b[:, 2] * (k2 & not3)
        high += b[:, 1] * take1
        if negative_zero is not None:
            _drop_negative_zero(low, negative_zero)
            _drop_negative_zero(high, negative_zero)
        if short:
            kept_bits[sl] = pair
        # p0 = 0, 1 or 2 and p1 = 3, 2 or 1, from the same masks.
        p0 = not0.view(np.uint8) + take2.view(np.uint8)
        p1 = 3 - not3.view(np.uint8) - take1.view(np.uint8)
        np.bitwise_or(p0, p1 << 2, out=codes[sl])
    values_shape = list(weights.shape)
    values_shape[axis] = KEEP * _group_count(weights.shape, axis)
    return Sparse24Tensor(
        values=kept.reshape(values_shape),
        metadata=_pack_codes(codes),
        shape=weights.shape,
        axis=axis,
    )


def prune_24_magnitude(weights: np.ndarray, axis: int) -> Sparse24Tensor:
    """Keep the 2 largest ``|w|`` of every 4 consecutive elements along ``axis``.

    NVIDIA's recommended one-shot rule.  Ties go to the lower index.
    """
    return prune_24(weights, None, axis)


def prune_24_gradient(weights: np.ndarray, gradients: np.ndarray, axis: int) -> Sparse24Tensor:
    """Keep the 2 elements of every group of 4 with the largest ``|w * g|``.

    Weights that are both large and have a large loss gradient matter most; the
    product is formed in at least float32 so that float16 and bfloat16 inputs
    neither overflow nor flush to zero.
    """
    return prune_24(weights, gradient_importance(weights, gradients), axis)


def gradient_importance(weights: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """``|w * g|`` in at least float32 (float64 when either input is float64)."""
    weights = np.asarray(weights)
    gradients = np.asarray(gradients)
    if gradients.shape != weights.shape:
        raise ValueError(f"gradients have shape {gradients.shape}, weights {weights.shape}")
    compute = np.float64 if np.float64 in (weights.dtype, gradients.dtype) else np.float32
    return np.abs(weights.astype(compute) * gradients.astype(compute))


def keep_mask(sparse: Sparse24Tensor) -> np.ndarray:
    """Boolean array of the dense shape, True where an element was kept."""
    bits = _CODE_TO_MASK[sparse.codes()]
    mask = np.empty((*bits.shape[:2], GROUP, *bits.shape[2:]), dtype=bool)
    for q in range(GROUP):
        mask[:, :, q, :] = (bits >> q) & 1
    return _ungroup(mask, sparse.shape, sparse.axis)


def _ungroup(grouped: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Inverse of :func:`_group_view`: drop the padding and restore ``shape``."""
    pre, groups, _, post = grouped.shape
    flat = grouped.reshape(pre, groups * GROUP, post)
    if groups * GROUP != shape[axis]:
        flat = np.ascontiguousarray(flat[:, : shape[axis], :])
    return flat.reshape(shape)


def decompress(sparse: Sparse24Tensor) -> np.ndarray:
    """The dense pruned tensor: kept values in place, zeros elsewhere.

    Exact inverse of the compression done by :func:`prune_24`.

    Raises:
        ValueError: Some group's code is not ``p0 | p1 << 2`` with ``p0 < p1``
            (damaged metadata, which no dense tensor matches).
    """
    codes = sparse.codes()
    invalid = _invalid_codes(codes)
    if invalid:
        raise ValueError(f"{invalid} of {sparse.num_groups} groups have an invalid position code (p0 < p1 needed)")
    pre, groups, post = codes.shape
    rows = pre * groups
    codes = codes.reshape(rows, post)
    kept = _bits(sparse.values).reshape(rows, KEEP, post)
    dense = np.empty((pre, groups, GROUP, post), dtype=sparse.values.dtype)
    out = _bits(dense).reshape(rows, GROUP, post)
    # Chunk by chunk (temporaries stay small): member q is the lower kept value where
    # p0 == q, the higher one where p1 == q, else +0; bits times a 0/1 mask is a select.
    for sl in _chunk_rows(rows, post):
        p0, p1 = codes[sl] & 3, codes[sl] >> 2
        low, high = kept[sl, 0], kept[sl, 1]
        for q in range(GROUP):
            member = out[sl, q]
            np.multiply(low, p0 == q, out=member)
            member += high * (p1 == q)
    return _ungroup(dense, sparse.shape, sparse.axis)


def count_dense_groups(weights: np.ndarray, axis: int) -> int:
    """Number of groups of 4 along ``axis`` with more than 2 non-zeros (0 for a 2:4 tensor).

    A partial group at the end of the axis counts its missing elements as zeros.
    ``-0.0`` is zero; NaN is not.
    """
    weights = np.asarray(weights)
    axis = _normalize_axis(axis, weights.ndim)
    if weights.size == 0:
        return 0
    x = _group_view(weights, axis, 0)
    nonzero = (x[:, :, 0, :] != 0).view(np.uint8) + (x[:, :, 1, :] != 0).view(np.uint8)
    nonzero += (x[:, :, 2, :] != 0).view(np.uint8)
    nonzero += (x[:, :, 3, :] != 0).view(np.uint8)
    return int(np.count_nonzero(nonzero > KEEP))


def is_24(weights: np.ndarray, axis: int) -> bool:
    """True when every group of 4 consecutive elements along ``axis`` has at least 2 zeros.

    See :func:`count_dense_groups` for partial groups, ``-0.0`` and NaN.
    """
    return count_dense_groups(weights, axis) == 0
