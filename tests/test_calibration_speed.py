"""What makes calibration fast stays exact where it must be and honest where it estimates.

The factorisation SparseGPT's sweep reads (against a direct inverse), the im2col
patches of a sample of output pixels (against the full patches), ``X^T X`` from a
sample of rows (an unbiased estimate, counted in the report), layer inputs read
alike by one weight summed in one accumulator, the thread settings, and the
heartbeat saying what a slow layer is on.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparse24_onnx import prune_model
from sparse24_onnx.calibration.capture import ConvPatches, collect_stats
from sparse24_onnx.core.sparsegpt import factor_inverse, sparsegpt_factor
from sparse24_onnx.errors import BadInput
from sparse24_onnx.modelio.load import load_model
from sparse24_onnx.passes import FindWeights
from sparse24_onnx.passes.weights import Status, WeightRecord
from sparse24_onnx.pipeline.options import PruneOptions
from sparse24_onnx.pipeline.progress import LayerProgress


@pytest.mark.parametrize("k", [8, 600])  # 600: the triangular inverse by halves, two levels deep
def test_the_factor_is_the_upper_cholesky_factor_of_the_dampened_inverse(k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((k // 2, k)) @ rng.standard_normal((k, k))  # fewer rows than K: rank-deficient
    h = (x.T @ x).astype(np.float32)
    h[:, 3] = h[3, :] = 0  # an input that is always zero
    upper, dead = sparsegpt_factor(h, 0.1)
    assert np.flatnonzero(dead).tolist() == [3]
    assert np.array_equal(upper, np.triu(upper))
    assert (np.diag(upper) > 0).all()
    dampened = h.astype(np.float64)
    dampened[3, 3] = 1.0
    dampened[np.diag_indices(k)] += 0.1 * np.mean(np.diag(dampened))
    inverse = np.linalg.inv(dampened)
    np.testing.assert_allclose(upper.T @ upper, inverse, rtol=1e-7, atol=1e-9 * np.abs(inverse).max())
    np.testing.assert_allclose(factor_inverse((upper, dead)), inverse, rtol=1e-7, atol=1e-9 * np.abs(inverse).max())


CONVS = [  # kernel, strides, pads, dilations, auto_pad
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), "NOTSET"),
    ((3, 5), (2, 1), (0, 2, 1, 0), (1, 2), "NOTSET"),
    ((3,), (2,), (0, 0), (1,), "SAME_UPPER"),
    ((2, 2, 2), (1, 2, 1), (0,) * 6, (1, 1, 1), "VALID"),
]


@pytest.mark.parametrize(("kernel", "strides", "pads", "dilations", "auto_pad"), CONVS)
def test_sampled_patches_are_those_rows_of_the_full_patches(kernel, strides, pads, dilations, auto_pad):
    patches = ConvPatches(kernel, strides, pads, dilations, auto_pad)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, *[9] * len(kernel))).astype(np.float32)
    full = patches.rows(x)
    assert full.shape[0] == patches.positions(x.shape)
    sample = np.sort(rng.choice(full.shape[0], 7, replace=False))
    np.testing.assert_array_equal(patches.rows(x, sample), full[sample])


def _mlp_records(models_dir):
    model = load_model(models_dir / "mlp.onnx")
    return model, [r for r in FindWeights()(model).weights if r.status == Status.CANDIDATE]


def test_a_row_sample_estimates_x_transpose_x_and_is_counted(models_dir):
    model, records = _mlp_records(models_dir)
    rng = np.random.default_rng(0)
    feeds = [{"x": (rng.standard_normal((200, 64)) + 1).astype(np.float32)} for _ in range(8)]
    everything = collect_stats(model, records, feeds, rows_per_feature=0)["fc0.weight"]
    sampled = collect_stats(model, records, feeds, rows_per_feature=4)["fc0.weight"]
    # Every row: X^T X exactly; sq_norm always from every row.
    x = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    np.testing.assert_allclose(everything.hessian, x.T @ x, rtol=1e-5)
    assert (everything.hessian_rows, everything.hessian_available, everything.sampled) == (1600, 1600, False)
    np.testing.assert_allclose(sampled.sq_norm, everything.sq_norm, rtol=1e-6)
    # 4 rows per feature: 4 * 64 / 8 feeds = 32 rows of each feed's 200, weighted to estimate all 200.
    assert (sampled.hessian_rows, sampled.hessian_available, sampled.sampled) == (256, 1600, True)
    assert np.trace(sampled.hessian) == pytest.approx(np.trace(x.T @ x), rel=0.1)
    error = np.linalg.norm(sampled.hessian - x.T @ x) / np.linalg.norm(x.T @ x)
    assert 0 < error < 0.2
    # Seeded: the same sample every run.
    again = collect_stats(model, records, feeds, rows_per_feature=4)["fc0.weight"]
    np.testing.assert_array_equal(again.hessian, sampled.hessian)


def _shared_weight_model(path):
    """One weight read by three MatMuls on three different activations (as an unrolled recurrent layer)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", [f"x{i}", "w"], [f"y{i}"]) for i in range(3)]
    nodes.append(helper.make_node("Sum", ["y0", "y1", "y2"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["n", 16]) for i in range(3)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_weight_read_by_several_nodes_sums_their_inputs_in_one_accumulator(tmp_path):
    model = load_model(_shared_weight_model(tmp_path / "shared.onnx"))
    records = [r for r in FindWeights()(model).weights if r.status == Status.CANDIDATE]
    rng = np.random.default_rng(0)
    feeds = [{f"x{i}": rng.standard_normal((5, 16)).astype(np.float32) for i in range(3)} for _ in range(4)]
    stats = collect_stats(model, records, feeds, hold_out=True)["w"]
    rows = np.concatenate([f[f"x{i}"] for f in feeds for i in range(3)]).astype(np.float64)
    np.testing.assert_allclose(stats.hessian, rows.T @ rows, rtol=1e-5)
    held = np.concatenate([feeds[3][f"x{i}"] for i in range(3)]).astype(np.float64)  # every 4th feed
    np.testing.assert_allclose(stats.held_out, held.T @ held, rtol=1e-5)
    assert (stats.rows, stats.held_out_rows, stats.hessian_rows) == (60, 15, 60)


def test_rows_per_feature_is_checked():
    with pytest.raises(BadInput, match="rows_per_feature= must be a whole number"):
        PruneOptions(method="sparsegpt", calibration=[{"x": np.zeros((1, 4), np.float32)}], rows_per_feature=-1).check()
    with pytest.raises(BadInput, match="which was not given"):
        PruneOptions(rows_per_feature=8).check()


def test_the_report_says_how_many_rows_each_layer_used_and_the_threads(models_dir, tmp_path):
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((100, 64)).astype(np.float32)} for _ in range(4)]
    result = prune_model(
        models_dir / "mlp.onnx", tmp_path / "o.onnx", method="sparsegpt", calibration=feeds, rows_per_feature=2,
        validate=False,
    )  # fmt: skip
    first = next(t for t in result.report["tensors"] if t["name"] == "fc0.weight")
    assert (first["calibration"]["hessian_rows"], first["calibration"]["hessian_rows_available"]) == (128, 400)
    sampled = result.report["calibration"]["summary"]["sampled"]
    assert sampled["layers"] >= 1
    assert sampled["rows"] < sampled["available"]
    threads = result.report["threads"]
    assert threads["cores"] >= 1
    assert threads["onnxruntime"] == threads["cores"]


def test_the_heartbeat_says_what_a_slow_layer_is_on(caplog):
    record = WeightRecord(name="big.weight", source=None, graph="", shape=(8, 8), dtype="FLOAT")
    progress = LayerProgress(heartbeat=0.01, detail=lambda: "candidate 3/4: sparsegpt (damp 0.01)")
    wait = threading.Event()
    with caplog.at_level(logging.INFO, logger="sparse24_onnx"):
        progress(0, 1, record)
        while not any("still pruning" in r.getMessage() for r in caplog.records):
            wait.wait(0.01)
        progress.finish()
    beat = next(r.getMessage() for r in caplog.records if "still pruning" in r.getMessage())
    assert beat.endswith("; candidate 3/4: sparsegpt (damp 0.01))")
