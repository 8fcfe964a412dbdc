"""Test models with the graph shapes real exporters produce (issue 3).

* ``constant_nodes.onnx``: weights in ``Constant`` nodes (Paddle style), one feeding two MatMuls.
* ``subgraphs.onnx``: MatMuls inside If branches and a Loop body, nested, using a branch
  initializer, a branch Constant and an initializer of the outer graph.
* ``function.onnx``: a model-local function with a Constant weight inside its body, and a
  function whose weight is passed in by the caller as an initializer.
* ``cast_transpose.onnx``: fp32 weight -> Cast(fp16) -> MatMul; weight -> Transpose -> MatMul;
  weight -> Transpose -> Gemm(transB=1).
* ``quantized.onnx``: int8 weight -> DequantizeLinear -> MatMul; int8 -> Cast -> Mul(scale) ->
  MatMul; MatMulInteger.
* ``shared_gemm.onnx``: one initializer feeding 12 Gemm nodes (like an unrolled LSTM cell).
* ``both_constant.onnx``: MatMul whose A and B are both initializers.
* ``opset7.onnx``: MatMul and Gemm (C required) at opset 7, IR version 4.
* ``ir3.onnx``: the same at IR version 3, where every initializer is also a graph input (a constant there).
* ``odd_shapes.onnx``: a declared output shape that is wrong, no value_info, an output without sizes.
* ``nan_weights.onnx``: one weight with NaN, one with Inf, one clean.
* ``cnn.onnx``: convolutions of every kind (RGB input, grouped, depthwise, 1-D, 3-D, ConvTranspose).
* ``cnn_bn.onnx``: Conv -> BatchNormalization -> Relu -> Mul -> Conv and Gemm -> Sigmoid -> Gemm chains.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _w(rng, shape, dtype=np.float32):
    return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(dtype)


def _const(name: str, array: np.ndarray, node_name: str | None = None) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], name=node_name or f"/{name}/Constant", value=numpy_helper.from_array(array, name)
    )


def _finish(graph, opset=17, ir_version=8, extra_opsets=(), functions=()) -> onnx.ModelProto:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset), *extra_opsets],
        functions=list(functions),
    )
    model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def constant_nodes(seed: int = 10) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes = [
        _const("w0", _w(rng, (32, 64))),
        _const("w1", _w(rng, (48, 64))),  # Gemm transB=1: [N, K] -> axis 1
        _const("w2", _w(rng, (48, 48))),  # used by two MatMuls
        helper.make_node("MatMul", ["x", "w0"], ["h0"], name="/l0/MatMul"),
        helper.make_node("Relu", ["h0"], ["r0"], name="/l0/Relu"),
        helper.make_node("Gemm", ["r0", "w1"], ["h1"], name="/l1/Gemm", transB=1),
        helper.make_node("MatMul", ["h1", "w2"], ["h2"], name="/l2a/MatMul"),
        helper.make_node("MatMul", ["h2", "w2"], ["y"], name="/l2b/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_nodes",
        [helper.make_tensor_value_info("x", F, ["batch", 32])],
        [helper.make_tensor_value_info("y", F, ["batch", 48])],
    )
    return _finish(graph)


def subgraphs(seed: int = 11) -> onnx.ModelProto:
    """If(cond) { then: x @ outer_w @ then_w ; else: x @ else_const } then Loop 2x { h @ loop_w } with a nested If."""
    rng = np.random.default_rng(seed)
    outer_w = numpy_helper.from_array(_w(rng, (16, 16)), "outer.weight")
    then_branch = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "outer.weight"], ["t0"], name="/then/outer/MatMul"),
            helper.make_node("MatMul", ["t0", "then.weight"], ["t_out"], name="/then/MatMul"),
        ],
        "then_branch",
        [],
        [helper.make_tensor_value_info("t_out", F, ["batch", 16])],
        [numpy_helper.from_array(_w(rng, (16, 16)), "then.weight")],
    )
    else_branch = helper.make_graph(
        [
            _const("else.weight", _w(rng, (16, 16))),
            helper.make_node("MatMul", ["x", "else.weight"], ["e_out"], name="/else/MatMul"),
        ],
        "else_branch",
        [],
        [helper.make_tensor_value_info("e_out", F, ["batch", 16])],
    )
    nested_then = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "nested.weight"], ["n_out"], name="/loop/nested/MatMul")],
        "nested_then",
        [],
        [helper.make_tensor_value_info("n_out", F, ["batch", 16])],
        [numpy_helper.from_array(_w(rng, (16, 16)), "nested.weight")],
    )
    nested_else = helper.make_graph(
        [helper.make_node("Identity", ["h_in"], ["n_id"], name="/loop/nested/Identity")],
        "nested_else",
        [],
        [helper.make_tensor_value_info("n_id", F, ["batch", 16])],
    )
    loop_body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "loop.weight"], ["l0"], name="/loop/MatMul"),
            helper.make_node("If", ["cond"], ["l1"], name="/loop/If", then_branch=nested_then, else_branch=nested_else),
            helper.make_node("Add", ["l0", "l1"], ["h_out"], name="/loop/Add"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="/loop/cond"),
        ],
        "loop_body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", F, ["batch", 16]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", F, ["batch", 16]),
        ],
        [numpy_helper.from_array(_w(rng, (16, 16)), "loop.weight")],
    )
    nodes = [
        helper.make_node("If", ["cond"], ["branch"], name="/If", then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Loop", ["trips", "", "branch"], ["y"], name="/Loop", body=loop_body),
    ]
    graph = helper.make_graph(
        nodes,
        "subgraphs",
        [
            helper.make_tensor_value_info("x", F, ["batch", 16]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", F, ["batch", 16])],
        [outer_w, numpy_helper.from_array(np.array(2, np.int64), "trips")],
    )
    return _finish(graph)


def function(seed: int = 12) -> onnx.ModelProto:
    """local.Dense(X, W) = X @ W with W from the caller; local.Fixed(X) = X @ Constant."""
    rng = np.random.default_rng(seed)
    dense = helper.make_function(
        "local",
        "Dense",
        ["X", "W"],
        ["Y"],
        [helper.make_node("MatMul", ["X", "W"], ["Y"], name="/Dense/MatMul")],
        [helper.make_opsetid("", 17)],
    )
    fixed = helper.make_function(
        "local",
        "Fixed",
        ["X"],
        ["Y"],
        [
            _const("fixed.weight", _w(rng, (32, 32)), "/Fixed/Constant"),
            helper.make_node("MatMul", ["X", "fixed.weight"], ["Y"], name="/Fixed/MatMul"),
        ],
        [helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Dense", ["x", "dense.weight"], ["h"], name="/call/Dense", domain="local"),
            helper.make_node("Fixed", ["h"], ["y"], name="/call/Fixed", domain="local"),
        ],
        "function",
        [helper.make_tensor_value_info("x", F, ["batch", 32])],
        [helper.make_tensor_value_info("y", F, ["batch", 32])],
        [numpy_helper.from_array(_w(rng, (32, 32)), "dense.weight")],
    )
    return _finish(graph, extra_opsets=[helper.make_opsetid("local", 1)], functions=[dense, fixed])


def cast_transpose(seed: int = 13) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, (32, 32)), "cast.weight"),  # Cast to fp16, MatMul B: axis 0
        numpy_helper.from_array(_w(rng, (24, 32)), "t.weight"),  # Transpose -> [32, 24] MatMul B: axis perm[0] = 1
        numpy_helper.from_array(_w(rng, (32, 40)), "tg.weight"),  # Transpose -> [40, 32] Gemm transB=1: axis 0
    ]
    nodes = [
        helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="/x/Cast"),
        helper.make_node("Cast", ["cast.weight"], ["cast.weight16"], to=TensorProto.FLOAT16, name="/w/Cast"),
        helper.make_node("MatMul", ["x16", "cast.weight16"], ["h16"], name="/cast/MatMul"),
        helper.make_node("Cast", ["h16"], ["h"], to=F, name="/h/Cast"),
        helper.make_node("Transpose", ["t.weight"], ["t.weight.T"], perm=[1, 0], name="/t/Transpose"),
        helper.make_node("MatMul", ["h", "t.weight.T"], ["h2"], name="/t/MatMul"),  # [b,32]@[32,24]
        helper.make_node("Pad", ["h2", "pads"], ["h3"], name="/pad"),  # [b, 32]
        helper.make_node("Transpose", ["tg.weight"], ["tg.weight.T"], name="/tg/Transpose"),  # default: reverse
        helper.make_node("Gemm", ["h3", "tg.weight.T"], ["y"], transB=1, name="/tg/Gemm"),  # [b,32]@[32,40]
    ]
    inits.append(numpy_helper.from_array(np.array([0, 0, 0, 8], np.int64), "pads"))
    graph = helper.make_graph(
        nodes,
        "cast_transpose",
        [helper.make_tensor_value_info("x", F, ["batch", 32])],
        [helper.make_tensor_value_info("y", F, ["batch", 40])],
        inits,
    )
    return _finish(graph)


def quantized(seed: int = 14) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    q = lambda shape: rng.integers(-100, 100, shape).astype(np.int8)  # noqa: E731
    inits = [
        numpy_helper.from_array(q((16, 16)), "dq.weight"),
        numpy_helper.from_array(np.array(0.01, np.float32), "dq.scale"),
        numpy_helper.from_array(q((16, 16)), "cm.weight"),
        numpy_helper.from_array(np.array(0.02, np.float32), "cm.scale"),
        numpy_helper.from_array(q((16, 16)), "mmi.weight"),
        numpy_helper.from_array(_w(rng, (16, 16)), "float.weight"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["dq.weight", "dq.scale"], ["dq.w"], name="/dq/DequantizeLinear"),
        helper.make_node("MatMul", ["x", "dq.w"], ["a"], name="/dq/MatMul"),
        helper.make_node("Cast", ["cm.weight"], ["cm.wf"], to=F, name="/cm/Cast"),
        helper.make_node("Mul", ["cm.wf", "cm.scale"], ["cm.w"], name="/cm/Mul"),
        helper.make_node("MatMul", ["a", "cm.w"], ["b"], name="/cm/MatMul"),
        helper.make_node("MatMulInteger", ["xq", "mmi.weight"], ["c"], name="/mmi/MatMulInteger"),
        helper.make_node("MatMul", ["b", "float.weight"], ["y"], name="/float/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "quantized",
        [
            helper.make_tensor_value_info("x", F, ["batch", 16]),
            helper.make_tensor_value_info("xq", TensorProto.INT8, [2, 16]),
        ],
        [
            helper.make_tensor_value_info("y", F, ["batch", 16]),
            helper.make_tensor_value_info("c", TensorProto.INT32, [2, 16]),
        ],
        inits,
    )
    return _finish(graph)


def shared_gemm(seed: int = 15, steps: int = 12) -> onnx.ModelProto:
    """h_{t+1} = tanh(Gemm(h_t, W, transB=1) + Gemm(x_t, U, transB=1)): W and U feed 12 Gemms each."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_w(rng, (32, 32)), "cell.weight_hh"),
        numpy_helper.from_array(_w(rng, (32, 16)), "cell.weight_ih"),
    ]
    nodes = [
        helper.make_node("Split", ["x"], [f"x{t}" for t in range(steps)], axis=0, num_outputs=steps, name="/split")
    ]
    h = "h0"
    for t in range(steps):
        nodes += [
            helper.make_node("Gemm", [h, "cell.weight_hh"], [f"hh{t}"], transB=1, name=f"/step{t}/hh"),
            helper.make_node("Gemm", [f"x{t}", "cell.weight_ih"], [f"ih{t}"], transB=1, name=f"/step{t}/ih"),
            helper.make_node("Add", [f"hh{t}", f"ih{t}"], [f"s{t}"], name=f"/step{t}/add"),
            helper.make_node("Tanh", [f"s{t}"], [f"h{t + 1}"], name=f"/step{t}/tanh"),
        ]
        h = f"h{t + 1}"
    nodes.append(helper.make_node("Identity", [h], ["y"], name="/out"))
    graph = helper.make_graph(
        nodes,
        "shared_gemm",
        [helper.make_tensor_value_info("x", F, [steps, 16]), helper.make_tensor_value_info("h0", F, [1, 32])],
        [helper.make_tensor_value_info("y", F, [1, 32])],
        inits,
    )
    return _finish(graph, opset=18)


def both_constant(seed: int = 16) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["a.const", "b.weight"], ["c"], name="/const/MatMul"),
            helper.make_node("MatMul", ["x", "c"], ["y"], name="/x/MatMul"),
        ],
        "both_constant",
        [helper.make_tensor_value_info("x", F, ["batch", 16])],
        [helper.make_tensor_value_info("y", F, ["batch", 16])],
        [numpy_helper.from_array(_w(rng, (16, 32)), "a.const"), numpy_helper.from_array(_w(rng, (32, 16)), "b.weight")],
    )
    return _finish(graph)


def opset7(seed: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w0"], ["h"], name="/mm"),
            helper.make_node("Gemm", ["h", "w1", "b1"], ["y"], transB=1, name="/gemm"),
        ],
        "opset7",
        [helper.make_tensor_value_info("x", F, [2, 16])],
        [helper.make_tensor_value_info("y", F, [2, 8])],
        [
            numpy_helper.from_array(_w(rng, (16, 32)), "w0"),
            numpy_helper.from_array(_w(rng, (8, 32)), "w1"),
            numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 4  # the first IR version that lets initializers be something else than inputs
    onnx.checker.check_model(model)
    return model


def ir3(seed: int = 20) -> onnx.ModelProto:
    """IR version 3: every initializer is also a graph input, which onnxruntime treats as a constant."""
    model = opset7(seed)
    graph = model.graph
    for tensor in graph.initializer:
        graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    model.ir_version = 3
    onnx.checker.check_model(model)
    return model


def odd_shapes(seed: int = 18) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"], name="/mm"),
            helper.make_node("Relu", ["y"], ["z"], name="/relu"),
        ],
        "odd_shapes",
        [helper.make_tensor_value_info("x", F, [2, 16])],
        [
            helper.make_tensor_value_info("y", F, [7, 3]),  # wrong: the product is [2, 8]
            helper.make_tensor_value_info("z", F, [None, None]),  # dimensions without sizes
        ],
        [numpy_helper.from_array(_w(rng, (16, 8)), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model  # the checker accepts it; the wrong shape only shows at run time


def nan_weights(seed: int = 19) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nan_w = _w(rng, (16, 16))
    nan_w[3, 3] = np.nan
    inf_w = _w(rng, (16, 16))
    inf_w[0, 5] = -np.inf
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "nan.weight"], ["a"], name="/nan"),
            helper.make_node("MatMul", ["x", "inf.weight"], ["b"], name="/inf"),
            helper.make_node("MatMul", ["x", "clean.weight"], ["c"], name="/clean"),
        ],
        "nan_weights",
        [helper.make_tensor_value_info("x", F, [2, 16])],
        [helper.make_tensor_value_info(n, F, [2, 16]) for n in "abc"],
        [
            numpy_helper.from_array(nan_w, "nan.weight"),
            numpy_helper.from_array(inf_w, "inf.weight"),
            numpy_helper.from_array(_w(rng, (16, 16)), "clean.weight"),
        ],
    )
    return _finish(graph)


def cnn(seed: int = 21) -> onnx.ModelProto:
    """Convolutions of every kind on a [batch, 3, 16, 16] image.

    * ``conv_rgb.weight`` [16, 3, 3, 3]: the RGB input layer, skipped (3 input channels).
    * ``conv2d.weight`` [32, 16, 3, 3]: pruned along input channels, per output channel and position.
    * ``grouped.weight`` [32, 16, 3, 3], group=2: 16 input channels per group, pruned.
    * ``depthwise.weight`` [32, 1, 3, 3], group=32: skipped (one channel per group).
    * ``conv20.weight`` [32, 20, 1, 1] on 20 of the channels: 20 is a multiple of 4 but not of 16,
      so it is skipped under ``--tc-shapes strict`` (the default) and pruned with ``off``.
    * ``up.weight`` [16, 32, 2, 2] of a ConvTranspose: skipped.
    * ``conv1d.weight`` [16, 32, 3] on a reshaped 1-D signal, and ``conv3d.weight`` [16, 16, 1, 3, 3].
    """
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = [
        numpy_helper.from_array(_w(rng, (16, 3, 3, 3)), "conv_rgb.weight"),
        numpy_helper.from_array(_w(rng, (32, 16, 3, 3)), "conv2d.weight"),
        numpy_helper.from_array((rng.standard_normal(32) * 0.1).astype(f), "conv2d.bias"),
        numpy_helper.from_array(_w(rng, (32, 16, 3, 3)), "grouped.weight"),
        numpy_helper.from_array(_w(rng, (32, 1, 3, 3)), "depthwise.weight"),
        numpy_helper.from_array(_w(rng, (32, 20, 1, 1)), "conv20.weight"),
        numpy_helper.from_array(_w(rng, (16, 32, 2, 2)), "up.weight"),
        numpy_helper.from_array(_w(rng, (16, 32, 3)), "conv1d.weight"),
        numpy_helper.from_array(_w(rng, (16, 16, 1, 3, 3)), "conv3d.weight"),
        numpy_helper.from_array(np.array([0, 32, -1], np.int64), "to_1d"),
        numpy_helper.from_array(np.array([0, 16, 1, 16, 16], np.int64), "to_3d"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_rgb.weight"], ["c0"], pads=[1, 1, 1, 1], name="/rgb/Conv"),
        helper.make_node("Relu", ["c0"], ["r0"], name="/rgb/Relu"),
        helper.make_node("Conv", ["r0", "conv2d.weight", "conv2d.bias"], ["c1"], pads=[1, 1, 1, 1], name="/c2d/Conv"),
        helper.make_node("Relu", ["c1"], ["r1"], name="/c2d/Relu"),
        helper.make_node("Conv", ["r1", "grouped.weight"], ["c2"], pads=[1, 1, 1, 1], group=2, name="/grouped/Conv"),
        helper.make_node("Conv", ["c2", "depthwise.weight"], ["c3"], pads=[1, 1, 1, 1], group=32, name="/dw/Conv"),
        helper.make_node("Slice", ["c3", "s_start", "t_end20", "s_axes"], ["c4a"], name="/slice20"),
        helper.make_node("Conv", ["c4a", "conv20.weight"], ["c5"], name="/c20/Conv"),
        helper.make_node("Slice", ["c5", "s_start16", "t_end16", "s_axes"], ["c5a"], name="/slice16"),
        helper.make_node("ConvTranspose", ["c5a", "up.weight"], ["c6"], strides=[2, 2], name="/up/ConvTranspose"),
        helper.make_node("Reshape", ["c5", "to_1d"], ["s1"], name="/to1d"),
        helper.make_node("Conv", ["s1", "conv1d.weight"], ["y1"], pads=[1, 1], name="/c1d/Conv"),
        helper.make_node("Reshape", ["c5a", "to_3d"], ["v1"], name="/to3d"),
        helper.make_node("Conv", ["v1", "conv3d.weight"], ["y3"], pads=[0, 1, 1, 0, 1, 1], name="/c3d/Conv"),
    ]
    inits += [
        numpy_helper.from_array(np.array([0], np.int64), "s_start"),
        numpy_helper.from_array(np.array([20], np.int64), "t_end20"),
        numpy_helper.from_array(np.array([1], np.int64), "s_axes"),
        numpy_helper.from_array(np.array([0], np.int64), "s_start16"),
        numpy_helper.from_array(np.array([16], np.int64), "t_end16"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", F, ["batch", 3, 16, 16])],
        [
            helper.make_tensor_value_info("c6", F, ["batch", 32, 32, 32]),
            helper.make_tensor_value_info("y1", F, ["batch", 16, 256]),
            helper.make_tensor_value_info("y3", F, ["batch", 16, 1, 16, 16]),
        ],
        inits,
    )
    return _finish(graph)


def cnn_bn(seed: int = 22) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> channel-wise Mul -> Conv, and Gemm -> Sigmoid -> Gemm.

    Both are chains whose middle channels can be permuted exactly (for ``--permute``).
    """
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = [
        numpy_helper.from_array(_w(rng, (32, 16, 3, 3)), "c1.weight"),
        numpy_helper.from_array((rng.standard_normal(32) * 0.1).astype(f), "c1.bias"),
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal(32)).astype(f), "bn.scale"),
        numpy_helper.from_array((0.1 * rng.standard_normal(32)).astype(f), "bn.bias"),
        numpy_helper.from_array((0.1 * rng.standard_normal(32)).astype(f), "bn.mean"),
        numpy_helper.from_array((1 + 0.1 * rng.random(32)).astype(f), "bn.var"),
        numpy_helper.from_array((1 + 0.1 * rng.standard_normal((32, 1, 1))).astype(f), "gain"),
        numpy_helper.from_array(np.array(0.5, f), "half"),
        numpy_helper.from_array(_w(rng, (32, 32, 3, 3)), "c2.weight"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
        numpy_helper.from_array(_w(rng, (64, 512)), "g1.weight"),  # transB=1: [N=64, K=512]
        numpy_helper.from_array((0.1 * rng.standard_normal(64)).astype(f), "g1.bias"),
        numpy_helper.from_array(_w(rng, (64, 16)), "g2.weight"),  # transB=0: [K=64, N=16]
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1.weight", "c1.bias"], ["a"], pads=[1, 1, 1, 1], name="/c1/Conv"),
        helper.make_node("BatchNormalization", ["a", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b"], name="/bn"),
        helper.make_node("Relu", ["b"], ["c"], name="/relu"),
        helper.make_node("Mul", ["c", "gain"], ["d"], name="/gain"),
        helper.make_node("Mul", ["d", "half"], ["e"], name="/half"),
        helper.make_node("Conv", ["e", "c2.weight"], ["f"], pads=[1, 1, 1, 1], strides=[2, 2], name="/c2/Conv"),
        helper.make_node("GlobalAveragePool", ["f"], ["g"], name="/pool"),  # [b, 32, 1, 1]
        helper.make_node("Reshape", ["f", "flat"], ["h"], name="/flatten"),  # [b, 32 * 4 * 4]
        helper.make_node("Gemm", ["h", "g1.weight", "g1.bias"], ["i"], transB=1, name="/g1/Gemm"),
        helper.make_node("Sigmoid", ["i"], ["j"], name="/sigmoid"),
        helper.make_node("Gemm", ["j", "g2.weight"], ["y"], name="/g2/Gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn_bn",
        [helper.make_tensor_value_info("x", F, [2, 16, 8, 8])],
        [helper.make_tensor_value_info("y", F, [2, 16]), helper.make_tensor_value_info("g", F, [2, 32, 1, 1])],
        inits,
    )
    return _finish(graph)


MODELS = {
    "constant_nodes.onnx": constant_nodes,
    "subgraphs.onnx": subgraphs,
    "function.onnx": function,
    "cast_transpose.onnx": cast_transpose,
    "quantized.onnx": quantized,
    "shared_gemm.onnx": shared_gemm,
    "both_constant.onnx": both_constant,
    "opset7.onnx": opset7,
    "ir3.onnx": ir3,
    "odd_shapes.onnx": odd_shapes,
    "nan_weights.onnx": nan_weights,
    "cnn.onnx": cnn,
    "cnn_bn.onnx": cnn_bn,
}
