"""Error-correcting layer targets (``--sequential --correct``): the target, the captured cross term, the choice.

The corrected target against NumPy's least squares on one layer with a perturbed input;
the paired statistics ``[X~ | X]^T [X~ | X]`` against the two models' activations; and
on a small deep model the per-layer choice, which keeps the uncorrected fit unless the
correction is lower on held-out rows.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from sparse24_onnx import prune_model
from sparse24_onnx.calibration.paired import collect_paired_stats
from sparse24_onnx.core.correction import corrected_target, paired_output_error
from sparse24_onnx.core.sparsegpt import sparsegpt_24
from sparse24_onnx.errors import BadInput
from sparse24_onnx.modelio.load import load_model
from sparse24_onnx.passes import FindWeights
from sparse24_onnx.passes.weights import Status


def _perturbed_layer(seed=0, n=400, k=32, rows=12):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k)) @ rng.standard_normal((k, k))  # dense model's input
    # Moved by the earlier layers' pruning: a distortion of the dense input plus what cannot be undone.
    distortion = np.eye(k) + 0.3 * rng.standard_normal((k, k)) / np.sqrt(k)
    x_pruned = x @ distortion + 0.05 * rng.standard_normal((n, k)) @ rng.standard_normal((k, k))
    w = rng.standard_normal((rows, k))
    return x, x_pruned, w


def test_the_corrected_target_is_the_least_squares_fit_to_the_dense_output():
    x, x_pruned, w = _perturbed_layer()
    h_pruned, cross = x_pruned.T @ x_pruned, x_pruned.T @ x
    ours = corrected_target(w, h_pruned, cross, damp=0.0)
    reference = np.linalg.lstsq(x_pruned, x @ w.T, rcond=None)[0].T  # argmin ||X~ W*^T - X W^T||
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-8)
    # Dampened, the target is pulled towards the weight itself (not towards zero).
    np.testing.assert_allclose(corrected_target(w, h_pruned, cross, damp=1e6), w, rtol=1e-4, atol=1e-4)
    halfway = corrected_target(w, h_pruned, cross, damp=1.0)
    assert np.linalg.norm(halfway - w) < np.linalg.norm(ours - w)


def test_the_paired_error_is_the_direct_one_and_correcting_lowers_it():
    x, x_pruned, w = _perturbed_layer(1)
    h_pruned, cross, h = x_pruned.T @ x_pruned, x_pruned.T @ x, x.T @ x
    plain = sparsegpt_24(w, h_pruned, damp=0.01)
    direct = np.linalg.norm(x_pruned @ plain.T - x @ w.T) / np.linalg.norm(x @ w.T)
    assert paired_output_error(w, plain, h_pruned, cross, h) == pytest.approx(direct, rel=1e-9)
    corrected = sparsegpt_24(corrected_target(w, h_pruned, cross, 0.01), h_pruned, damp=0.01)
    assert paired_output_error(w, corrected, h_pruned, cross, h) < 0.9 * direct


def test_paired_statistics_are_the_two_models_activations_side_by_side(models_dir, tmp_path):
    """``H~``, ``C`` and ``H`` against onnxruntime's own activations of a dense and a perturbed model."""
    source = onnx.load(models_dir / "mlp.onnx")
    perturbed = onnx.load(models_dir / "mlp.onnx")
    weight = next(i for i in perturbed.graph.initializer if i.name == "fc0.weight")
    values = numpy_helper.to_array(weight).copy()
    values[::2] = 0  # as if pruned
    weight.CopyFrom(numpy_helper.from_array(values, "fc0.weight"))
    onnx.save(perturbed, tmp_path / "pruned.onnx")
    dense_model, pruned_model = load_model(models_dir / "mlp.onnx"), load_model(tmp_path / "pruned.onnx")
    record = next(r for r in FindWeights()(pruned_model).weights if r.name == "fc1.weight")
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((5, 64)).astype(np.float32)} for _ in range(4)]
    paired = collect_paired_stats(dense_model, pruned_model, record, feeds, hold_out=True, rows_per_feature=0)

    def activations(model):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        copy.graph.output.append(onnx.helper.make_tensor_value_info("act0", onnx.TensorProto.FLOAT, None))
        session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(["act0"], f)[0] for f in feeds]).astype(np.float64)

    x, x_pruned = activations(source), activations(perturbed)
    h_pruned, cross, h = paired.blocks("full")
    scale = np.abs(x.T @ x).max()
    np.testing.assert_allclose(h_pruned, x_pruned.T @ x_pruned, atol=1e-5 * scale)
    np.testing.assert_allclose(cross, x_pruned.T @ x, atol=1e-5 * scale)
    np.testing.assert_allclose(h, x.T @ x, atol=1e-5 * scale)
    held = paired.blocks("held")[1]  # every 4th feed held out
    x_h, x_pruned_h = x[15:], x_pruned[15:]
    np.testing.assert_allclose(held, x_pruned_h.T @ x_h, atol=1e-5 * scale)
    assert not np.allclose(cross, h)  # the earlier layer's change shows


def test_sequential_correct_chooses_per_layer_on_held_out_rows(models_dir, tmp_path):
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((32, 64)).astype(np.float32)} for _ in range(8)]
    result = prune_model(
        models_dir / "mlp.onnx", tmp_path / "o.onnx", calibration=calibration, sequential=True, correct=True,
        validate=False,
    )  # fmt: skip
    notes = [t["calibration"] for t in result.report["tensors"] if t["status"] == "pruned"]
    assert all(note["paired"] for note in notes)
    for note in notes:
        plain = min(e for label, e in note["candidates"].items() if "correction" not in label)
        with_correction = min(e for label, e in note["candidates"].items() if "correction" in label)
        # Never worse than the uncorrected fit on held-out rows (but for the 1 % a simpler candidate may win by).
        assert note["held_out_error"] <= plain * 1.01
        if note["corrected"]:
            assert with_correction <= plain
        assert with_correction > 0
    # The first layer's input is the model's: nothing to correct, both fits see the same rows.
    first = next(t["calibration"] for t in result.report["tensors"] if t["name"] == "fc0.weight")
    assert first["layer_output_error"] == pytest.approx(first["own_input_error"], rel=1e-9)


def test_correct_implies_sequential_and_needs_a_calibrated_method(models_dir, tmp_path):
    calibration = [{"x": np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)} for _ in range(4)]
    result = prune_model(models_dir / "mlp.onnx", tmp_path / "o.onnx", calibration=calibration, correct=True,
                         validate=False)  # fmt: skip
    check = result.report["calibration"]["correction"]  # the sequential corrected trial ran
    assert set(check["scores"]) == {"sequential, corrected", "one shot"}
    with pytest.raises(BadInput, match="correct= go"):
        prune_model(models_dir / "mlp.onnx", tmp_path / "p.onnx", method="magnitude", correct=True)


def test_records_are_candidates(models_dir):
    """The model the tests above use has the three layers they name."""
    model = load_model(models_dir / "mlp.onnx")
    names = {r.name for r in FindWeights()(model).weights if r.status == Status.CANDIDATE}
    assert {"fc0.weight", "fc1.weight", "fc2.weight"} <= names


def test_a_layer_that_cannot_be_paired_says_so(models_dir, tmp_path):
    """A grouped convolution is fitted uncorrected, and the run says how many and why."""
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
    result = prune_model(models_dir / "cnn.onnx", tmp_path / "o.onnx", calibration=calibration, correct=True,
                         tc_shapes="off", validate=False)  # fmt: skip
    check = result.report["calibration"]["correction"]
    assert {"why": "a grouped convolution", "count": 1} in check["uncorrected"], check  # in the corrected trial
    notes = [t["calibration"] for t in result.report["tensors"] if t["calibration"]]
    unpaired = [n for n in notes if n.get("uncorrected")]
    summary = result.report["calibration"]["summary"]["uncorrected"]
    assert sum(entry["count"] for entry in summary) == len(unpaired)
    # What was written says so when the corrected model was kept; the one-shot model has nothing to say.
    assert bool(unpaired) == (check["kept"] == "sequential, corrected")
    assert any("--correct was not offered" in w for w in result.warnings) == bool(unpaired)


def test_a_weight_read_by_several_layer_inputs_is_paired_over_all_of_them(models_dir):
    """An unrolled recurrent cell: its weight's fit sums every time step's ``[X~ | X]``, as the capture does."""
    from sparse24_onnx.calibration.capture import collect_stats

    rng = np.random.default_rng(0)
    dense, pruned = load_model(models_dir / "shared_gemm.onnx"), load_model(models_dir / "shared_gemm.onnx")
    feeds = [{"x": rng.standard_normal((12, 16)).astype(np.float32),
              "h0": rng.standard_normal((1, 32)).astype(np.float32)} for _ in range(4)]  # fmt: skip
    record = next(r for r in FindWeights(tc_shapes="off")(pruned).weights if r.name == "cell.weight_hh")
    paired = collect_paired_stats(dense, pruned, record, feeds, hold_out=False, rows_per_feature=0)
    h_pruned, cross, h = paired.blocks("full")
    ordinary = collect_stats(pruned, [record], feeds, hold_out=False, rows_per_feature=0)[record.name]
    expected = np.asarray(ordinary.full_hessian(), dtype=np.float64)
    assert paired.joint.rows == ordinary.rows == 12 * 4  # 12 steps of one row, 4 feeds
    np.testing.assert_allclose(h_pruned, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cross, expected, rtol=1e-5, atol=1e-4)  # the same model: nothing moved
    np.testing.assert_allclose(h, expected, rtol=1e-5, atol=1e-4)


def test_correct_keeps_the_trial_whose_outputs_move_less(models_dir, tmp_path):
    """The model-level check: both trials' errors are the written model's on the held-out calibration feeds."""
    rng = np.random.default_rng(1)
    calibration = [{"x": rng.standard_normal((32, 64)).astype(np.float32)} for _ in range(8)]
    result = prune_model(models_dir / "mlp.onnx", tmp_path / "o.onnx", calibration=calibration, sequential=True,
                         correct=True, validate=False)  # fmt: skip
    check = result.report["calibration"]["correction"]
    errors = check["scores"]
    assert check["kept"] == min(errors, key=errors.get)
    assert check["feeds"] == "held-out calibration feeds"
    dense = ort.InferenceSession(str(models_dir / "mlp.onnx"), providers=["CPUExecutionProvider"])
    written = ort.InferenceSession(str(tmp_path / "o.onnx"), providers=["CPUExecutionProvider"])
    held = calibration[3::4]
    want = np.concatenate([dense.run(None, f)[0] for f in held])
    got = np.concatenate([written.run(None, f)[0] for f in held])
    assert np.linalg.norm(got - want) / np.linalg.norm(want) == pytest.approx(errors[check["kept"]], rel=1e-3)


def test_correct_writes_the_one_shot_model_when_that_moves_less_and_says_so(models_dir):
    """A corrected trial that breaks the model loses to the one-shot one; the model is left as it was."""
    from sparse24_onnx.calibration.capture import collect_stats
    from sparse24_onnx.methods import CalibratedMethod
    from sparse24_onnx.pipeline.channel_order import Guard
    from sparse24_onnx.pipeline.correction_guard import ONE_SHOT, choose_correction

    class Broken:
        """Stands in for the sequential corrected method: every weight pruned to zero."""

        step = ""

        def prune(self, record, weights, out=None):
            record.calibration = {"paired": True}
            return np.zeros_like(weights)

    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((32, 64)).astype(np.float32)} for _ in range(8)]
    model = load_model(models_dir / "mlp.onnx")
    records = [r for r in FindWeights()(model).weights if r.status == Status.CANDIDATE]
    before = {r.name: r.source.tensor.numpy().copy() for r in records}
    warnings: list[str] = []
    choice = choose_correction(
        model, Broken(), lambda: CalibratedMethod("sparsegpt", collect_stats(model, records, feeds)),
        Guard(feeds[3::4], None, None, "held-out calibration feeds"), warnings,
    )  # fmt: skip
    assert choice.entry["kept"] == ONE_SHOT
    errors = choice.entry["scores"]
    assert errors["sequential, corrected"] > 0.9 > 0.5 > errors[ONE_SHOT]  # only the biases were left
    assert len(warnings) == 1
    assert "one-shot model was written" in warnings[0]
    for record in records:
        np.testing.assert_array_equal(record.source.tensor.numpy(), before[record.name])  # restored
        assert np.count_nonzero(choice.results[record.name]) > 0  # the one-shot results
        assert "paired" not in record.calibration


def test_correct_with_permute_is_refused(models_dir, tmp_path):
    with pytest.raises(BadInput, match="correct= with permute="):
        prune_model(models_dir / "mlp.onnx", tmp_path / "o.onnx", calibration=[{"x": np.zeros((1, 64), np.float32)}],
                    sequential=True, correct=True, permute=True)  # fmt: skip


def test_with_gates_the_check_scores_the_validation_feeds_by_them(models_dir, tmp_path):
    """Choose by the task: the user's gates on the validation feeds decide between the two prunings."""
    rng = np.random.default_rng(3)
    calibration = [{"x": rng.standard_normal((32, 64)).astype(np.float32)} for _ in range(8)]
    held = [{"x": rng.standard_normal((32, 64)).astype(np.float32)} for _ in range(2)]
    result = prune_model(models_dir / "mlp.onnx", tmp_path / "o.onnx", calibration=calibration, correct=True,
                         inputs=held, min_top1_agreement=0.5)  # fmt: skip
    check = result.report["calibration"]["correction"]
    assert (check["feeds"], check["score"]) == ("validation feeds", "gates' violation")
    scores = check["scores"]
    assert check["kept"] == min(scores, key=scores.get)
    gate = result.report["validation"]["gates"][0]
    # The written model's violation of the one gate, on the same feeds: (1 - agreement) / (1 - bound).
    assert scores[check["kept"]] == pytest.approx((1 - gate["value"]) / 0.5)


def test_the_block_target_also_undoes_the_residual_streams_error():
    """With a residual stream moved by ``E``, the target is the least-squares fit to ``X W^T + E``."""
    from sparse24_onnx.core.correction import Residual

    x, x_pruned, w = _perturbed_layer(2)
    rng = np.random.default_rng(5)
    error = x_pruned @ rng.standard_normal((32, 12)) * 0.1 + 0.05 * rng.standard_normal((400, 12))
    residual = Residual(x_pruned.T @ error, x.T @ error, (error**2).sum(axis=0))
    h_pruned, cross, h = x_pruned.T @ x_pruned, x_pruned.T @ x, x.T @ x
    ours = corrected_target(w, h_pruned, cross, damp=0.0, residual=residual)
    reference = np.linalg.lstsq(x_pruned, x @ w.T + error, rcond=None)[0].T
    np.testing.assert_allclose(ours, reference, rtol=1e-6, atol=1e-8)
    pruned = sparsegpt_24(ours, h_pruned, damp=0.01)
    direct = np.linalg.norm(x_pruned @ pruned.T - x @ w.T - error) / np.linalg.norm(x @ w.T)
    assert paired_output_error(w, pruned, h_pruned, cross, h, residual=residual) == pytest.approx(direct, rel=1e-9)
    layer_only = sparsegpt_24(corrected_target(w, h_pruned, cross, 0.0), h_pruned, damp=0.01)
    assert paired_output_error(w, layer_only, h_pruned, cross, h, residual=residual) > direct


def _residual_model(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """y = relu(x W1) W2 + b + relu(x W1): W2's output is added to a residual stream (through a bias)."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"),
        helper.make_node("Relu", ["a"], ["h"], name="relu"),
        helper.make_node("MatMul", ["h", "w2"], ["m"], name="fc2"),
        helper.make_node("Add", ["m", "b2"], ["mb"], name="bias"),
        helper.make_node("Reshape", ["mb", "shape"], ["r"], name="keep"),
        helper.make_node("Add", ["r", "h"], ["y"], name="residual"),
    ]
    inits = [
        numpy_helper.from_array(w1.astype(np.float32), "w1"),
        numpy_helper.from_array(w2.astype(np.float32), "w2"),
        numpy_helper.from_array(np.linspace(-1, 1, 16).astype(np.float32), "b2"),
        numpy_helper.from_array(np.array([-1, 16], np.int64), "shape"),
    ]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 16])], inits)  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_residual_streams_error_is_captured_beside_the_layer_inputs(tmp_path):
    """``G = X~^T E``, ``F = X^T E`` and ``||E_j||^2`` against onnxruntime's activations; the stream is found
    through the bias ``Add`` and the ``Reshape``."""
    from sparse24_onnx.calibration.paired import residual_stream

    rng = np.random.default_rng(4)
    w1, w2 = rng.standard_normal((16, 16)), rng.standard_normal((16, 16))
    moved = w1.copy()
    moved[::2] = 0
    onnx.save(_residual_model(w1, w2), tmp_path / "dense.onnx")
    onnx.save(_residual_model(moved, w2), tmp_path / "pruned.onnx")
    dense, pruned = load_model(tmp_path / "dense.onnx"), load_model(tmp_path / "pruned.onnx")
    record = next(r for r in FindWeights(tc_shapes="off")(pruned).weights if r.name == "w2")
    assert residual_stream(record.uses[0].ref).name == "h"
    first = next(r for r in FindWeights(tc_shapes="off")(pruned).weights if r.name == "w1")
    assert residual_stream(first.uses[0].ref) is None  # read by Relu, not added to a stream
    feeds = [{"x": rng.standard_normal((6, 16)).astype(np.float32)} for _ in range(4)]
    paired = collect_paired_stats(dense, pruned, record, feeds, hold_out=False, rows_per_feature=0)

    def hidden(path):
        model = onnx.load(path)
        model.graph.output.append(onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, None))
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(["h"], f)[0] for f in feeds]).astype(np.float64)

    x, x_pruned = hidden(tmp_path / "dense.onnx"), hidden(tmp_path / "pruned.onnx")
    error = x - x_pruned  # the stream is the layer input itself here
    found = paired.residual("full")
    scale = np.abs(x.T @ x).max()
    np.testing.assert_allclose(found.g, x_pruned.T @ error, atol=1e-5 * scale)
    np.testing.assert_allclose(found.f, x.T @ error, atol=1e-5 * scale)
    np.testing.assert_allclose(found.sq_norms, (error**2).sum(axis=0), atol=1e-5 * scale)
    np.testing.assert_allclose(paired.blocks("full")[0], x_pruned.T @ x_pruned, atol=1e-5 * scale)
    assert paired.pruned_stats.sq_norm.shape == (16,)


def test_the_runs_guard_is_the_gates_on_the_validation_feeds_when_there_are_gates():
    """One rule for every model-level check (--permute, --correct): the user's gates decide where given."""
    from types import SimpleNamespace

    from sparse24_onnx.pipeline.guard import Guard
    from sparse24_onnx.runtime.feeds import FeedSet
    from sparse24_onnx.validation.compare import compare_runs
    from sparse24_onnx.validation.gates import parse_bounds

    feeds = [{"x": np.full((2, 4), i, np.float32)} for i in range(8)]
    calibration = FeedSet(feeds, source="test", inputs=[])
    reference = SimpleNamespace(feeds=SimpleNamespace(feeds=feeds[:2]), outputs=[[np.eye(4)]] * 2, output_names=["y"])
    assert Guard.for_run(calibration, reference, []).feeds == feeds[3::4]
    assert Guard.for_run(None, reference, []).label == "validation feeds"
    assert Guard.for_run(None, None, []) is None
    gates = parse_bounds("min_top1_agreement=", 0.5)
    guard = Guard.for_run(calibration, reference, gates)
    assert (guard.label, guard.scored) == ("validation feeds", "gates' violation")
    half_right = np.eye(4)[[0, 1, 0, 0]]  # top-1 agrees on 2 of 4 rows: the gate's bound, violation 1
    assert guard.measure(compare_runs(["y"], [[np.eye(4)]], [[half_right]])) == pytest.approx(1.0)


def test_auto_exclude_prunes_a_sequential_method_sequentially(models_dir, tmp_path):
    """The sensitivity search's trial prunes as the pruning pass would: each layer on the model pruned
    before it, so with nothing left dense it writes exactly what ``--sequential`` alone writes."""
    rng = np.random.default_rng(6)
    calibration = [{"x": rng.standard_normal((32, 64)).astype(np.float32)} for _ in range(8)]
    held = [{"x": rng.standard_normal((8, 64)).astype(np.float32)}]
    common = {"calibration": calibration, "sequential": True, "inputs": held}
    plain = prune_model(models_dir / "mlp.onnx", tmp_path / "a.onnx", **common)
    searched = prune_model(models_dir / "mlp.onnx", tmp_path / "b.onnx", auto_exclude=True, max_rel_error=10.0,
                           **common)  # fmt: skip
    assert searched.report["auto_exclude"]["dense"] == []
    written = {i.name: numpy_helper.to_array(i) for i in onnx.load(tmp_path / "b.onnx").graph.initializer}
    for init in onnx.load(tmp_path / "a.onnx").graph.initializer:
        np.testing.assert_array_equal(written[init.name], numpy_helper.to_array(init))
    assert plain.report["validation"]["worst_rel_l2_error"] == searched.report["validation"]["worst_rel_l2_error"]
