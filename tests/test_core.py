"""Property tests of the NumPy core against direct, independent reference computations."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sparse24_onnx.core import (
    DenseMetrics,
    PruneMetrics,
    Sparse24Tensor,
    compute_metrics,
    compute_metrics_dense,
    count_dense_groups,
    decompress,
    gradient_importance,
    is_24,
    keep_mask,
    prune_24,
    prune_24_dense,
    prune_24_gradient,
    prune_24_magnitude,
    sparse_matmul,
)

DTYPES = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64)]


@st.composite
def weights_and_axis(draw, dtypes=DTYPES, max_dims=4, small_values=True):
    """A random tensor (ties likely: values drawn from a small set) and an axis."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=max_dims, min_side=1, max_side=9))
    pool = (
        st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 3.25, -3.25])
        if small_values
        else st.floats(-1e3, 1e3, allow_nan=False, width=16)
    )
    values = draw(hnp.arrays(np.float64, shape, elements=pool))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return values.astype(dtype), axis


def reference_keep(weights: np.ndarray, axis: int) -> np.ndarray:
    """Kept positions by a different route: sort each group by -|w| (stable, so lower index wins ties)."""
    moved = np.moveaxis(np.abs(weights.astype(np.float64)), axis, -1)
    length = moved.shape[-1]
    pad = (-length) % 4
    padded = np.concatenate([moved, np.full((*moved.shape[:-1], pad), -1.0)], axis=-1)
    groups = padded.reshape((*padded.shape[:-1], -1, 4))
    order = np.argsort(-groups, axis=-1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :2], True, axis=-1)
    keep = keep.reshape(padded.shape)[..., :length]
    return np.moveaxis(keep, -1, axis)


@settings(max_examples=300, deadline=None)
@given(weights_and_axis())
def test_magnitude_keeps_top2_with_ties_to_lower_index(case):
    weights, axis = case
    sparse = prune_24_magnitude(weights, axis)
    expected = reference_keep(weights, axis)
    np.testing.assert_array_equal(keep_mask(sparse), expected)
    dense = decompress(sparse)
    assert dense.dtype == weights.dtype
    assert dense.shape == weights.shape
    # Kept elements are bit-identical (but -0.0 is written +0.0), pruned ones are +0.
    canonical = np.where(weights == 0, np.zeros_like(weights), weights)
    unsigned = f"u{weights.itemsize}"
    np.testing.assert_array_equal(dense.view(unsigned)[expected], canonical.view(unsigned)[expected])
    assert not np.any(dense[~expected])
    assert is_24(dense, axis)


@settings(max_examples=200, deadline=None)
@given(weights_and_axis(small_values=False))
def test_exactly_two_of_four_kept_and_round_trip(case):
    weights, axis = case
    sparse = prune_24_magnitude(weights, axis)
    mask = np.moveaxis(keep_mask(sparse), axis, -1)
    length = mask.shape[-1]
    full = length - length % 4
    per_group = mask[..., :full].reshape((*mask.shape[:-1], -1, 4)).sum(axis=-1)
    assert np.all(per_group == 2)
    if length % 4:  # a partial group keeps min(2, its real size)
        assert np.all(mask[..., full:].sum(axis=-1) == min(2, length % 4))
    # Round trip: recompressing the decompressed tensor gives the same storage.
    again = prune_24_magnitude(decompress(sparse), axis)
    np.testing.assert_array_equal(decompress(again).view(np.uint8), decompress(sparse).view(np.uint8))
    # The compressed form reconstructs exactly from its own fields.
    rebuilt = Sparse24Tensor(sparse.values.copy(), sparse.metadata.copy(), sparse.shape, sparse.axis)
    np.testing.assert_array_equal(decompress(rebuilt).view(np.uint8), decompress(sparse).view(np.uint8))


@settings(max_examples=200, deadline=None)
@given(weights_and_axis(small_values=False))
def test_metrics_match_direct_computation(case):
    weights, axis = case
    sparse = prune_24_magnitude(weights, axis)
    metrics = compute_metrics(weights, sparse)
    keep = reference_keep(weights, axis)
    magnitude = np.abs(weights.astype(np.float64))
    pruned = decompress(sparse).astype(np.float64)
    assert metrics.total_count == weights.size
    assert metrics.pruned_count == int((~keep).sum())
    assert metrics.approximation_error == pytest.approx(np.abs(pruned - weights.astype(np.float64)).mean())
    assert metrics.kept_magnitude_mean == pytest.approx(magnitude[keep].mean())
    expected_pruned = magnitude[~keep].mean() if (~keep).any() else 0.0
    assert metrics.pruned_magnitude_mean == pytest.approx(expected_pruned, abs=1e-9)
    if weights.shape[axis] % 4 == 0:  # 2 kept and 2 pruned per group, each kept >= each pruned
        assert metrics.pruned_magnitude_mean <= metrics.kept_magnitude_mean + 1e-12


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(DTYPES),
    st.integers(1, 12),
    st.integers(1, 33),
    st.integers(1, 7),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_sparse_matmul_equals_dense_matmul(dtype, m, k, n, vector, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k,) if vector else (k, n)).astype(np.float32)
    sparse = prune_24_magnitude(a, axis=1)
    result, speedup = sparse_matmul(sparse, b)
    expected = decompress(sparse).astype(np.float64) @ b.astype(np.float64)
    assert result.shape == expected.shape
    np.testing.assert_allclose(result.astype(np.float64), expected, rtol=1e-4, atol=1e-4)
    assert speedup == pytest.approx(k / (2 * -(-k // 4)))


def test_sparse_matmul_speedup_is_two_and_rejects_wrong_axis():
    a = np.arange(32, dtype=np.float32).reshape(4, 8)
    _, speedup = sparse_matmul(prune_24_magnitude(a, 1), np.ones((8, 3), np.float32))
    assert speedup == 2.0
    with pytest.raises(ValueError, match="last axis"):
        sparse_matmul(prune_24_magnitude(a, 0), np.ones((8, 3), np.float32))
    with pytest.raises(ValueError, match="cannot multiply"):
        sparse_matmul(prune_24_magnitude(a, 1), np.ones((7, 3), np.float32))


@settings(max_examples=150, deadline=None)
@given(
    weights_and_axis(dtypes=[np.dtype(np.float32), np.dtype(np.float16)], small_values=False), st.integers(0, 2**32 - 1)
)
def test_gradient_pruning_ranks_by_weight_times_gradient(case, seed):
    weights, axis = case
    gradients = np.random.default_rng(seed).standard_normal(weights.shape).astype(weights.dtype)
    sparse = prune_24_gradient(weights, gradients, axis)
    importance = np.abs(weights.astype(np.float32) * gradients.astype(np.float32))
    np.testing.assert_array_equal(keep_mask(sparse), reference_keep(importance, axis))
    np.testing.assert_array_equal(keep_mask(sparse), keep_mask(prune_24(weights, importance, axis)))


def test_gradient_changes_the_choice():
    weights = np.array([4.0, 3.0, 2.0, 1.0], np.float32)
    gradients = np.array([0.0, 0.1, 10.0, 10.0], np.float32)
    np.testing.assert_array_equal(decompress(prune_24_gradient(weights, gradients, 0)), [0, 0, 2, 1])
    np.testing.assert_array_equal(decompress(prune_24_magnitude(weights, 0)), [4, 3, 0, 0])


def test_metadata_layout_is_the_documented_one():
    # Groups along axis 1 of a (2, 8) tensor: 4 groups, numbered in C order over (2, 2).
    weights = np.array(
        [[9, 0, 8, 0, 0, 0, 7, 6], [1, 5, 4, 0, 3, 0, 0, 2]],
        dtype=np.float32,
    )
    sparse = prune_24_magnitude(weights, 1)
    codes = [0 | 2 << 2, 2 | 3 << 2, 1 | 2 << 2, 0 | 3 << 2]  # (p0, p1) = (0,2) (2,3) (1,2) (0,3)
    assert sparse.metadata.tolist() == [codes[0] | codes[1] << 4, codes[2] | codes[3] << 4]
    np.testing.assert_array_equal(sparse.values, [[9, 8, 7, 6], [5, 4, 3, 2]])
    assert sparse.memory_bytes == 8 * 4 + 2
    assert sparse.num_elements == 16
    assert sparse.sparsity_percent == 50.0
    assert sparse.values.shape == (2, 4)


def test_odd_group_count_and_padding():
    weights = np.array([[1, -5, 2, 3, 0.5, -4]], np.float32)  # 2 groups along axis 1, the second padded
    sparse = prune_24_magnitude(weights, 1)
    assert sparse.values.shape == (1, 4)
    assert sparse.metadata.shape == (1,)
    np.testing.assert_array_equal(decompress(sparse), [[0, -5, 0, 3, 0.5, -4]])
    assert not is_24(weights, 1)
    assert is_24(decompress(sparse), 1)
    assert sparse.sparsity_percent == pytest.approx(100 * 2 / 6)


def test_already_sparse_is_unchanged_and_zeros_count():
    weights = np.array([[0, 0, 0, 7], [0, 1, 0, 2]], np.float32)
    sparse = prune_24_magnitude(weights, 1)
    np.testing.assert_array_equal(decompress(sparse), weights)
    assert sparse.sparsity_percent == pytest.approx(100 * 5 / 8)
    assert compute_metrics(weights, sparse) == PruneMetrics(4, 8, 0.0, 10 / 4, 0.0)


def test_is_24_counts_negative_zero_as_zero_and_nan_as_nonzero():
    assert is_24(np.array([-0.0, -0.0, 1.0, 1.0]), 0)
    assert not is_24(np.array([np.nan, 0.0, 1.0, 1.0]), 0)
    assert is_24(np.zeros((0, 4)), 1)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        prune_24_magnitude(np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match="0-d"):
        prune_24_magnitude(np.float32(1), 0)
    with pytest.raises(ValueError, match="NaN"):
        prune_24(np.zeros(4), np.array([1, np.nan, 0, 0]), 0)
    with pytest.raises(ValueError, match="shape"):
        prune_24_gradient(np.zeros((4, 4)), np.zeros((4,)), 0)
    sparse = prune_24_magnitude(np.ones((4, 8), np.float32), 1)
    with pytest.raises(ValueError, match="values have shape"):
        Sparse24Tensor(sparse.values[:, :2], sparse.metadata, (4, 8), 1)
    with pytest.raises(ValueError, match="metadata"):
        Sparse24Tensor(sparse.values, sparse.metadata[:1], (4, 8), 1)


def test_core_imports_numpy_only():
    import ast
    from pathlib import Path

    import sparse24_onnx.core as core

    for path in Path(core.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in {
                    "numpy",
                    "__future__",
                    "dataclasses",
                    "functools",
                    "collections",
                    "typing",
                    "math",
                    "time",
                }, (
                    path,
                    name,
                )


@settings(max_examples=200, deadline=None)
@given(weights_and_axis(small_values=False), st.booleans(), st.integers(0, 2**32 - 1))
def test_dense_route_equals_compressed_route(case, by_gradient, seed):
    weights, axis = case
    importance = None
    if by_gradient:
        gradients = np.random.default_rng(seed).standard_normal(weights.shape).astype(np.float32)
        importance = gradient_importance(weights, gradients)
    dense = prune_24_dense(weights, axis, importance)
    expected = decompress(prune_24(weights, importance, axis))
    assert dense.dtype == weights.dtype
    assert dense.tobytes() == expected.tobytes()  # bit for bit: pruned elements are +0
    if weights.shape[axis] % 4 == 0 and importance is None:
        slow = compute_metrics(weights, prune_24_magnitude(weights, axis))
        accumulated = DenseMetrics()
        half = weights.shape[0] // 2 if axis != 0 else (weights.shape[0] // 8) * 4
        accumulated.add(weights[:half], dense[:half], values_kept=True)  # two blocks of whole rows
        accumulated.add(weights[half:], dense[half:], values_kept=True)
        for fast in (compute_metrics_dense(weights, dense, axis), accumulated.result()):
            assert fast.pruned_count == slow.pruned_count
            assert fast.total_count == slow.total_count
            for name in ("approximation_error", "kept_magnitude_mean", "pruned_magnitude_mean"):
                assert getattr(fast, name) == pytest.approx(getattr(slow, name), rel=1e-5, abs=1e-12), name


@pytest.mark.parametrize(("shape", "axis"), [((5, 70000), 1), ((8, 50000), 0), ((4, 3, 40000), 1)])
def test_many_chunks_give_the_same_result(shape, axis):
    # Shapes that span several chunks of the chunked engine, with odd chunk remainders.
    weights = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    dense = prune_24_dense(weights, axis)
    assert count_dense_groups(dense, axis) == 0
    assert reference_keep(weights, axis).tolist() == (dense != 0).tolist()
    np.testing.assert_array_equal(decompress(prune_24_magnitude(weights, axis)), dense)


@pytest.mark.parametrize(("shape", "axis"), [((16, 8, 100), 1), ((64, 12, 5), 1), ((40, 3), 0), ((6, 4096), 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_given_scores_short_and_long_rows(shape, axis, dtype):
    # Rows (elements after the axis) shorter than _SHORT_ROWS are compared member-major,
    # longer ones in place; both must rank by the given scores, ties to the lower index.
    rng = np.random.default_rng(3)
    weights = rng.standard_normal(shape).astype(dtype)
    importance = np.round(rng.random(shape) * 4).astype(np.float32)  # many ties
    sparse = prune_24(weights, importance, axis)
    np.testing.assert_array_equal(keep_mask(sparse), reference_keep(importance, axis))
    assert prune_24_dense(weights, axis, importance).tobytes() == decompress(sparse).tobytes()


def test_pruned_zeros_are_positive_zeros():
    weights = np.array([-1.0, -2.0, -3.0, -4.0], np.float32)
    for dense in (prune_24_dense(weights, 0), decompress(prune_24_magnitude(weights, 0))):
        assert dense.view(np.uint32).tolist()[:2] == [0, 0]
