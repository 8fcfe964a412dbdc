"""Channel permutation: the search keeps more magnitude, and every rewrite leaves the model's function unchanged."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse24_onnx.core.permutation import retained_score, search_permutation
from sparse24_onnx.modelio.load import load_model
from sparse24_onnx.optimize import main as optimize_main
from sparse24_onnx.passes import FindWeights, PermuteChannels, Pipeline
from sparse24_onnx.passes.weights import weight_records


def test_retained_score_matches_a_direct_computation():
    s = np.abs(np.random.default_rng(0).standard_normal((8, 5)))
    direct = sum(
        sorted(s[g * 4 : g * 4 + 4, c])[-1] + sorted(s[g * 4 : g * 4 + 4, c])[-2] for g in range(2) for c in range(5)
    )
    assert retained_score(s) == pytest.approx(direct)
    perm = np.array([4, 5, 6, 7, 0, 1, 2, 3])
    assert retained_score(s, perm) == pytest.approx(direct)  # swapping whole groups changes nothing


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_search_returns_a_permutation_never_worse(groups, columns, seed):
    s = np.abs(np.random.default_rng(seed).standard_normal((4 * groups, columns)))
    result = search_permutation(s, seconds=0.5, seed=seed)
    assert sorted(result.perm.tolist()) == list(range(4 * groups))
    assert result.after == pytest.approx(retained_score(s, result.perm))
    assert result.before == pytest.approx(retained_score(s))
    assert result.after >= result.before - 1e-9
    assert result.after <= result.total + 1e-9


def test_search_finds_the_best_order_of_a_small_case():
    # 8 channels: channels 0-3 large in column 0, 4-7 large in column 1; the identity order
    # keeps 2 large ones per column, interleaving them keeps 4.
    s = np.zeros((8, 2))
    s[0:4, 0] = [10, 9, 8, 7]
    s[4:8, 1] = [10, 9, 8, 7]
    result = search_permutation(s, seconds=1.0)
    best = max(retained_score(s, np.array(p)) for p in itertools.permutations(range(8)) if p[0] == 0)
    assert result.after == pytest.approx(best)
    assert result.after > result.before


CHAINS = {
    "transformer.onnx": {"ffn.down.weight": "/ffn/up/MatMul"},
    "gemm.onnx": {"g1.weight": "/g0/Gemm"},
    "cnn_bn.onnx": {"c2.weight": "/c1/Conv", "g2.weight": "/g1/Gemm"},
    "mlp.onnx": {"fc1.weight": "/fc0/MatMul"},  # fc1 -> local function -> fc2 is not followed
}


def _feed(session):
    rng = np.random.default_rng(0)
    feed = {}
    for arg in session.get_inputs():
        dims = [d if isinstance(d, int) else 3 for d in arg.shape]
        if arg.type == "tensor(int64)":
            feed[arg.name] = rng.integers(0, 100, dims).astype(np.int64)
        else:
            feed[arg.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


@pytest.mark.parametrize("name", list(CHAINS))
def test_permutation_leaves_the_function_unchanged(models_dir, tmp_path, name):
    model = load_model(models_dir / name)
    before = {v.name: v.const_value.numpy().copy() for v in model.graph.initializers.values()}
    result = Pipeline(FindWeights(tc_shapes="off"), PermuteChannels(seconds=2.0))(model)
    assert result.modified
    permuted = {r.name: r.permutation for r in weight_records(model) if r.permutation}
    assert {n: p["producer"] for n, p in permuted.items()} == CHAINS[name]
    for info in permuted.values():
        assert info["retained_after"] > info["retained_before"]
    changed = [n for n, v in before.items() if not np.array_equal(model.graph.initializers[n].const_value.numpy(), v)]
    assert set(CHAINS[name]) <= set(changed)  # the consumer weights were reordered
    out = tmp_path / "permuted.onnx"
    ir.save(model, out)
    original = ort.InferenceSession(str(models_dir / name), providers=["CPUExecutionProvider"])
    permuted_session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = _feed(original)
    for y, z in zip(original.run(None, feed), permuted_session.run(None, feed), strict=True):
        np.testing.assert_allclose(z, y, rtol=1e-4, atol=1e-5 * float(np.abs(y).max()))


def test_shared_middle_value_is_not_permuted(models_dir):
    # In the transformer, the attention output projection's input is produced by a Reshape of a
    # MatMul of two activations, not by a layer: no chain; q/k/v read the embedding, used by many.
    model = load_model(models_dir / "transformer.onnx")
    Pipeline(FindWeights(), PermuteChannels(seconds=1.0))(model)
    permuted = {r.name for r in weight_records(model) if r.permutation}
    assert permuted == {"ffn.down.weight"}


def test_permute_from_the_command_line(models_dir, tmp_path):
    plain, permuted = tmp_path / "p.json", tmp_path / "q.json"
    source = models_dir / "cnn_bn.onnx"
    assert optimize_main([str(source), str(tmp_path / "p.onnx"), "-q", "--report", str(plain)]) == 0
    assert optimize_main([str(source), str(tmp_path / "q.onnx"), "-q", "--permute", "--report", str(permuted)]) == 0
    a = {t["name"]: t for t in json.loads(plain.read_text())["tensors"]}
    b = {t["name"]: t for t in json.loads(permuted.read_text())["tensors"]}
    for name in ("c2.weight", "g2.weight"):
        assert a[name]["permutation"] is None
        assert b[name]["permutation"]["retained_after"] > b[name]["permutation"]["retained_before"]
        # What pruning kept rose accordingly.
        assert b[name]["kept_magnitude_mean"] > a[name]["kept_magnitude_mean"]


def test_without_calibration_the_validation_feeds_guard_the_order(models_dir, tmp_path):
    from sparse24_onnx import prune_model

    result = prune_model(models_dir / "cnn_bn.onnx", tmp_path / "q.onnx", permute=True, num_feeds=2)
    guarded = [r.permutation for r in result.records if r.permutation and "model_error" in r.permutation]
    assert guarded
    for info in guarded:
        assert info["guard"] == "validation feeds"
        errors = info["model_error"]
        assert info.get("kept", True) == (errors["permuted"] < errors["original"])
    # With a gate, the gate decides (its violation on the validation feeds), with calibration too.
    rng = np.random.default_rng(0)
    images = [{"x": rng.standard_normal((2, 16, 8, 8)).astype(np.float32)} for _ in range(4)]
    gated = prune_model(models_dir / "cnn_bn.onnx", tmp_path / "s.onnx", permute=True, method="sparsegpt",
                        calibration=images, num_feeds=2, max_rel_error=10.0)  # fmt: skip
    checked = [r.permutation for r in gated.records if r.permutation and "model_error" in r.permutation]
    assert checked
    for info in checked:
        assert (info["guard"], info["guard_score"]) == ("validation feeds", "gates' violation")
    # No data at all: said, not silently trusted.
    bare = prune_model(models_dir / "cnn_bn.onnx", tmp_path / "r.onnx", permute=True, validate=False)
    assert any("no calibration or validation data" in w for w in bare.report["warnings"])


def test_the_time_cap_bounds_the_checks_too(models_dir):
    # A clock that advances 1 s per look: the checks after the search run out of time, so what was not
    # checked is put back (per layer) or the guard is abandoned, and a warning says so.
    from sparse24_onnx.calibration.capture import collect_stats
    from sparse24_onnx.methods.calibrated import CalibratedMethod
    from sparse24_onnx.pipeline import channel_order

    model = load_model(models_dir / "cnn_bn.onnx")
    records = FindWeights(tc_shapes="off")(model).weights
    session = ort.InferenceSession(str(models_dir / "cnn_bn.onnx"), providers=["CPUExecutionProvider"])
    feeds = [_feed(session) for _ in range(8)]
    stats = collect_stats(model, [r for r in records if r.status == "candidate"], feeds, hold_out=True)
    method = CalibratedMethod("sparsegpt", stats)
    ticks = iter(range(10**6))
    warnings: list[str] = []
    guard = channel_order.Guard(feeds[:2], None, None, "held-out calibration feeds")
    before = {v.name: v.const_value.numpy().copy() for v in model.graph.initializers.values()}
    chosen = channel_order.choose_channel_order(model, method, 2.5, guard, warnings, clock=lambda: float(next(ticks)))
    assert chosen is method  # nothing precomputed: the guard did not complete
    assert any("time cap" in w for w in warnings)
    notes = [r.permutation for r in weight_records(model) if r.permutation and r.permutation.get("kept") is False]
    for note in notes:
        assert "time cap" in note["note"] or "not lower" in note["note"]
    for record in weight_records(model):  # what was put back is back exactly
        if record.permutation and record.permutation.get("kept") is False:
            np.testing.assert_array_equal(record.source.tensor.numpy(), before[record.name])
