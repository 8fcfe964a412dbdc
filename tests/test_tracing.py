"""The tracing's shape rules and the op rules, table-driven on tiny models written in ONNX's text format."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from sparse24_onnx.passes import FindWeights
from sparse24_onnx.passes.op_rules import data_operand, output_channel_operands, slot_axis


def _model(body: str, weight_shape: tuple[int, ...], inputs: str = "float[2, 64] x", extra: str = "") -> ir.Model:
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g ({inputs}) => (float[2, 32] y) {extra}
    {{
        {body}
    }}
    """
    proto = onnx.parser.parse_model(text)
    weight = np.random.default_rng(0).standard_normal(weight_shape).astype(np.float32)
    proto.graph.initializer.append(numpy_helper.from_array(weight, "w"))
    return ir.from_proto(proto)


CASES = [
    # (what, body, weight shape, expected axis or a piece of the skip reason)
    ("MatMul B", "y = MatMul(x, w)", (64, 32), 0),
    ("Transpose then MatMul", "t = Transpose<perm=[1, 0]>(w)\n y = MatMul(x, t)", (32, 64), 1),
    ("Cast then MatMul", "c = Cast<to=1>(w)\n y = MatMul(x, c)", (64, 32), 0),
    ("Gemm transB", "y = Gemm<transB=1>(x, w)", (32, 64), 1),
    ("Identity then Gemm", "i = Identity(w)\n y = Gemm(x, i)", (64, 32), 0),
    (
        "Reshape keeps both axes",
        "s = Constant<value=int64[3] {1, 64, 32}>()\n r = Reshape(w, s)\n q = Constant<value=int64[2] {64, 32}>()\n"
        " r2 = Reshape(r, q)\n y = MatMul(x, r2)",
        (64, 32),
        0,
    ),
    (
        "Reshape merging the reduction axis",
        "s = Constant<value=int64[2] {64, 32}>()\n r = Reshape(w, s)\n y = MatMul(x, r)",
        (4, 16, 32),
        "merged or split",
    ),
    ("Reshape to a computed shape", "s = Shape(x)\n r = Reshape(w, s)\n y = MatMul(x, r)", (64, 32), "not a constant"),
    (
        "Unsqueeze then Squeeze",
        "a = Constant<value=int64[1] {0}>()\n u = Unsqueeze(w, a)\n q = Squeeze(u, a)\n y = MatMul(x, q)",
        (64, 32),
        0,
    ),
    ("also read by Add", "y0 = MatMul(x, w)\n z = Add(w, w)\n y = Identity(y0)", (64, 32), "is also read by Add"),
    (
        "QuantizeLinear -> DequantizeLinear",
        "s = Constant<value=float {0.1}>()\n q = QuantizeLinear(w, s)\n d = DequantizeLinear(q, s)\n y = MatMul(x, d)",
        (64, 32),
        0,
    ),
    ("Transpose with a bad perm", "t = Transpose<perm=[0, 1, 2]>(w)\n y = MatMul(x, t)", (64, 32), "perm"),
]


@pytest.mark.parametrize(("what", "body", "shape", "expected"), CASES, ids=[c[0] for c in CASES])
def test_shape_rules(what, body, shape, expected):
    records = FindWeights(tc_shapes="off")(_model(body, shape)).weights
    (record,) = [r for r in records if r.name == "w"]
    if isinstance(expected, int):
        assert record.status == "candidate", (what, record.reason)
        assert record.axis == expected
    else:
        assert record.status == "skipped"
        assert expected in record.reason, record.reason


def test_a_weight_that_is_a_graph_output_is_skipped():
    model = _model("y = MatMul(x, w)", (64, 32), extra="")
    model.graph.outputs.append(model.graph.initializers["w"])
    (record,) = FindWeights(tc_shapes="off")(model).weights
    assert "is also output 'w'" in record.reason


def _node(text: str, weight_shape=(64, 32)) -> ir.Node:
    return _model(text, weight_shape).graph.node(0)


@pytest.mark.parametrize(
    ("body", "index", "rank", "axes", "layout"),
    [
        ("y = MatMul(x, w)", 1, 2, (0, 1), "last"),
        ("y = Gemm<transA=1>(x, w)", 1, 2, (0, 1), "first"),
        ("y = Gemm<transB=1>(x, w)", 1, 2, (1, 0), "last"),
    ],
)
def test_op_rules(body, index, rank, axes, layout):
    node = _node(body)
    assert slot_axis(node, index, rank) == (axes, "")
    value, found = data_operand(node, index)
    assert found == layout
    assert value is node.inputs[0]


def test_conv_rules():
    model = _model("y = Conv<group=1>(x, w)", (32, 16, 3, 3), inputs="float[1, 16, 8, 8] x")
    node = model.graph.node(0)
    assert slot_axis(node, 1, 4) == ((1, 0), "")
    assert data_operand(node, 1) == (node.inputs[0], "channels")
    assert output_channel_operands(node) == [(node.inputs[1], 0)]
    assert slot_axis(node, 0, 4) == (None, "")
    assert data_operand(node, 0) is None
