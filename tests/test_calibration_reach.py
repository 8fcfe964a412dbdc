"""The calibrated method reaches every layer it can: Convs behind casts and dequantization, 1-D and 3-D
convolutions; what it cannot reach is counted and said; overflowing activations never crash it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.cnn_models import cast_fp16_cnn, conv_nd, small_cnn
from sparse24_onnx import prune_model
from sparse24_onnx.calibration.capture import ConvPatches
from tests.helpers import all_tensors, run_module

F = TensorProto.FLOAT


@pytest.mark.parametrize(
    ("weight_shape", "attributes", "input_shape"),
    [
        ((8, 4, 3), {"strides": [2], "pads": [1, 2], "dilations": [1]}, (2, 4, 11)),
        ((8, 4, 3, 2), {"strides": [1, 2], "pads": [1, 0, 1, 1], "dilations": [2, 1]}, (2, 4, 9, 8)),
        ((8, 4, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 1, 1]}, (1, 4, 5, 6, 4)),
        ((8, 4, 2, 3), {"auto_pad": "SAME_LOWER"}, (1, 4, 5, 6)),
        ((8, 4, 3, 3), {"auto_pad": "VALID"}, (1, 4, 5, 6)),
    ],
)
def test_im2col_rows_times_the_weight_is_onnxruntimes_convolution(weight_shape, attributes, input_shape):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(weight_shape).astype(np.float32)
    x = rng.standard_normal(input_shape).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], **attributes)
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", F, list(input_shape))],
        [helper.make_tensor_value_info("y", F, None)], [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    import onnx_ir as ir

    conv = ir.from_proto(model).graph.node(0)
    patches = ConvPatches.of(conv, weight_shape).rows(x)
    rows = np.moveaxis(w, 1, -1).reshape(weight_shape[0], -1)  # the methods' (M, kernel..., C) view
    got = (patches @ rows.T).reshape(x.shape[0], *expected.shape[2:], weight_shape[0])
    np.testing.assert_allclose(np.moveaxis(got, -1, 1), expected, rtol=1e-4, atol=1e-4)


def _save(graph: onnx.GraphProto, path):
    """A graph as an opset-17, IR-8 model file."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _feeds(model: onnx.ModelProto, count: int = 12) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    sizes = {"a": (2, 16, 40), "b": (2, 16, 6, 6, 6), "x": (2, 16, 12, 12)}
    names = [i.name for i in model.graph.input]
    return [{n: rng.standard_normal(sizes[n]).astype(np.float32) for n in names} for _ in range(count)]


def _qdq(model: onnx.ModelProto, folder) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(_feeds(model, 4))

        def get_next(self):
            return next(self.items, None)

    source, target = folder / "float.onnx", folder / "qdq.onnx"
    onnx.save(model, source)
    quantize_static(
        str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
    )  # fmt: skip
    return onnx.load(target)


@pytest.mark.parametrize("form", ["float", "cast_fp16", "qdq_int8", "conv_nd"])
def test_sparsegpt_runs_on_every_convolution(tmp_path, form):
    if form == "qdq_int8":
        model = _qdq(small_cnn(), tmp_path)
    else:
        model = {"float": small_cnn, "cast_fp16": cast_fp16_cnn, "conv_nd": conv_nd}[form]()
    feeds = _feeds(model)
    result = prune_model(
        model, tmp_path / "out.onnx", method="sparsegpt", tune=False, calibration=feeds, tc_shapes="off",
        validate=False,
    )  # fmt: skip
    pruned = [r for r in result.records if r.status == "pruned"]
    assert pruned
    for record in pruned:
        assert record.calibration["solver"] == "sparsegpt", (record.name, record.calibration["method"])
        assert "im2col" in record.calibration["method"]
    summary = result.report["calibration"]["summary"]
    assert summary["got"] == summary["layers"] == len(pruned)


def test_layers_inside_if_branches_are_calibrated_where_the_feeds_take_them(tmp_path):
    # The second weight sits inside the then-branch of an If: its activations are exposed through the If.
    rng = np.random.default_rng(0)
    w_then = numpy_helper.from_array((rng.standard_normal((64, 32)) / 8).astype(np.float32), "w_then")
    branch = helper.make_graph(
        [
            helper.make_node("Relu", ["h"], ["hr"]),  # the layer's input is computed inside the branch
            helper.make_node("MatMul", ["hr", "w_then"], ["z"], name="/then/MatMul"),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("z", F, ["n", 32])], [w_then],
    )  # fmt: skip
    other = helper.make_graph(
        [helper.make_node("Identity", ["h2"], ["z2"])], "else", [], [helper.make_tensor_value_info("z2", F, ["n", 32])]
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="/fc/MatMul"),
        helper.make_node("Slice", ["h", "s", "e"], ["h2"]),
        helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=other),
    ]
    inits = [
        numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([0], np.int64), "s"),
        numpy_helper.from_array(np.array([32], np.int64), "e"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", F, ["n", 64]),
        helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
    ]
    graph = helper.make_graph(nodes, "m", inputs, [helper.make_tensor_value_info("y", F, ["n", None])], inits)
    path = _save(graph, tmp_path / "m.onnx")
    not_taken = "1 got magnitude: its If branch (or Loop body) did not run on the calibration feeds"
    for flag, expected in ((True, "sparsegpt ran on 2 of 2 calibrated layers"),
                           (False, f"sparsegpt ran on 1 of 2 calibrated layers; {not_taken}")):  # fmt: skip
        folder = tmp_path / f"cal{flag}"
        folder.mkdir()
        for i in range(8):
            np.savez(folder / f"{i}.npz", x=rng.standard_normal((8, 64)).astype(np.float32), flag=np.array(flag))
        out = tmp_path / f"out{flag}.onnx"
        result = run_module("optimize", path, out, "--calibration", folder, "--no-validate", "--no-tune")
        assert result.returncode == 0, result.stderr
        assert expected in result.stderr
        written = onnx.load(out)
        (if_node,) = [n for n in written.graph.node if n.op_type == "If"]
        assert len(if_node.output) == 1  # the capture's extra outputs are gone
        assert [len(a.g.output) for a in if_node.attribute] == [1, 1]
    magnitude = tmp_path / "magnitude.onnx"
    assert run_module("optimize", path, magnitude, "--no-validate").returncode == 0
    calibrated, plain = all_tensors(tmp_path / "outTrue.onnx"), all_tensors(magnitude)
    assert not np.array_equal(calibrated["w_then"], plain["w_then"])  # SparseGPT updated the kept weights


def test_overflowing_activations_are_left_out_and_said_not_a_crash(tmp_path):
    # x -> MatMul -> Exp -> MatMul: large inputs overflow the Exp to inf, which reaches the second layer.
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="/fc1/MatMul"),
        helper.make_node("Exp", ["h"], ["e"]),
        helper.make_node("MatMul", ["e", "w2"], ["y"], name="/fc2/MatMul"),
    ]
    inits = [
        numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((64, 32)) / 8).astype(np.float32), "w2"),
    ]
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", F, ["n", 64])],
        [helper.make_tensor_value_info("y", F, ["n", 32])], inits,
    )  # fmt: skip
    path = _save(graph, tmp_path / "m.onnx")
    for method in ("wanda", "sparsegpt", "admm"):
        feeds = [{"x": rng.standard_normal((16, 64)).astype(np.float32) * (1 if i % 3 else 400)} for i in range(9)]
        result = prune_model(path, tmp_path / f"{method}.onnx", method=method, calibration=feeds, validate=False)
        assert result.report["summary"]["pruned"] == 2
        non_finite = result.report["calibration"]["summary"]["non_finite"]
        assert non_finite
        assert non_finite[0]["feeds"] == [0, 3, 6]
        assert any("held NaN or Inf" in w for w in result.report["warnings"])
    # Every row overflowing: the layer falls back to magnitude, with the reason.
    feeds = [{"x": np.full((4, 64), 400, np.float32)} for _ in range(4)]
    result = prune_model(path, tmp_path / "all.onnx", method="sparsegpt", calibration=feeds, validate=False)
    notes = {r.name: r.calibration for r in result.records}
    assert "held NaN or Inf" in notes["w2"]["fallback"]


def test_a_layer_inside_a_loop_body_gets_every_steps_rows(tmp_path):
    rng = np.random.default_rng(4)
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Relu", ["h_in"], ["r"]),  # the layer's input is computed in the body
            helper.make_node("MatMul", ["r", "w_loop"], ["h_out"], name="/loop/MatMul"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", F, ["n", 64]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", F, ["n", 64]),
        ],
    )  # fmt: skip
    nodes = [helper.make_node("Loop", ["steps", "go", "x"], ["y"], body=body)]
    inits = [
        numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "w_loop"),
        numpy_helper.from_array(np.array(3, np.int64), "steps"),
        numpy_helper.from_array(np.array(True), "go"),
    ]
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", F, ["n", 64])],
        [helper.make_tensor_value_info("y", F, ["n", 64])], inits,
    )  # fmt: skip
    path = _save(graph, tmp_path / "loop.onnx")
    feeds = [{"x": rng.standard_normal((8, 64)).astype(np.float32)} for _ in range(8)]
    result = prune_model(path, tmp_path / "out.onnx", calibration=feeds, tune=False, validate=False)
    (record,) = [r for r in result.records if r.name == "w_loop"]
    assert record.calibration["solver"] == "sparsegpt"
    assert record.calibration["samples"] == 3 * 8 * 8  # 3 steps x 8 rows x 8 feeds
    written = onnx.load(tmp_path / "out.onnx")
    (loop,) = [n for n in written.graph.node if n.op_type == "Loop"]
    assert len(loop.output) == 1
    assert len(loop.attribute[0].g.output) == 2


def test_grouped_convolutions_get_one_hessian_per_group(tmp_path):
    from sparse24_onnx.core.sparsegpt import wanda_importance

    rng = np.random.default_rng(6)
    w = rng.standard_normal((8, 4, 3, 3))
    sq = rng.random(8) + 0.1  # 8 input channels, 2 groups of 4
    got = wanda_importance(w, sq, 1, groups=2)
    for m in range(8):
        group = m // 4
        expected = np.abs(w[m]) * np.sqrt(sq[group * 4 : group * 4 + 4])[:, None, None]
        np.testing.assert_allclose(got[m], expected)
    # End to end: the grouped Conv of the shape catalogue gets SparseGPT, one X^T X per group.
    from models.graph_shapes import cnn

    path = tmp_path / "cnn.onnx"
    onnx.save(cnn(), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = [
        {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
         for i in session.get_inputs()}
        for _ in range(8)
    ]  # fmt: skip
    result = prune_model(path, tmp_path / "o.onnx", calibration=feeds, tc_shapes="off", validate=False, tune=False)
    (grouped,) = [r for r in result.records if r.name == "grouped.weight"]
    assert grouped.status == "pruned"
    assert grouped.calibration["solver"] == "sparsegpt"
    assert grouped.calibration["groups"] == 2
    assert "im2col, 2 groups" in grouped.calibration["method"]


def test_grouped_im2col_rows_times_each_groups_weights_is_onnxruntimes_convolution():
    import onnx_ir as ir

    rng = np.random.default_rng(7)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)  # 2 groups of 4 output and 4 input channels
    x = rng.standard_normal((2, 8, 6, 5)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], group=2, pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", F, list(x.shape))],
        [helper.make_tensor_value_info("y", F, None)], [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    expected = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    patches = ConvPatches.of(ir.from_proto(model).graph.node(0), w.shape)
    split = patches.by_group(patches.rows(x))  # (groups, rows, 9 * 4)
    rows = np.moveaxis(w, 1, -1).reshape(8, -1)
    for g in range(2):
        got = (split[g] @ rows[g * 4 : (g + 1) * 4].T).reshape(2, 6, 5, 4)
        np.testing.assert_allclose(np.moveaxis(got, -1, 1), expected[:, g * 4 : (g + 1) * 4], rtol=1e-4, atol=1e-4)
