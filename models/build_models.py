"""Build the small ONNX test models: ``python models/build_models.py [FOLDER]``.

Every model is deterministic (fixed seeds) and small enough to build in
milliseconds; tests build them into temporary folders.  Each one exercises a
different weight layout:

* ``mlp.onnx``: MatMul -> Add -> Relu chains, weights ``[K, N]`` (pruned along 0),
  with a symbolic batch dimension, metadata, doc strings, value_info and a
  model-local function, to check that everything else survives.
* ``mlp_fp16.onnx``: the same MLP in float16.
* ``gemm.onnx``: Gemm with ``transB=1`` (``[N, K]``, axis 1) and bias, then Gemm
  with ``transB=0`` (``[K, N]``, axis 0).
* ``gemm_trans_a.onnx``: Gemm whose constant A is transposed (``transA=1``,
  ``[K, M]``, axis 0), plus one whose B has a K of 30 (not a multiple of 4).
* ``matmul_a_const.onnx``: MatMul with the constant as A (``[M, K]``, axis 1).
* ``skips.onnx``: weights that must be skipped, each for its own reason.
* ``transformer.onnx``: one encoder block (self-attention + FFN) on
  ``[batch, seq, 64]`` with token-id input, embedding Gather and LayerNorm.

and the graph shapes of real exporters listed in :mod:`models.graph_shapes`.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if __package__ in (None, ""):  # run as a script: python models/build_models.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models import graph_shapes, quantized_models

OPSET = 17


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...], dtype=np.float32, scale=None) -> TensorProto:
    scale = scale if scale is not None else 1.0 / np.sqrt(shape[0])
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(dtype), name)


def _model(graph: onnx.GraphProto, opset: int = OPSET, **kwargs) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **kwargs)
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def mlp(dtype=np.float32, dims=(64, 128, 64, 32), seed: int = 0) -> onnx.ModelProto:
    """MatMul MLP with biases and Relu; the last activation goes through a local function."""
    rng = np.random.default_rng(seed)
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits, nodes = [], []
    x = "x"
    for i, (k, n) in enumerate(itertools.pairwise(dims)):
        inits.append(_init(rng, f"fc{i}.weight", (k, n), dtype))
        inits.append(_init(rng, f"fc{i}.bias", (n,), dtype, scale=0.1))
        nodes.append(
            helper.make_node(
                "MatMul", [x, f"fc{i}.weight"], [f"mm{i}"], name=f"/fc{i}/MatMul", doc_string=f"layer {i} product"
            )
        )
        nodes.append(helper.make_node("Add", [f"mm{i}", f"fc{i}.bias"], [f"add{i}"], name=f"/fc{i}/Add"))
        last = i == len(dims) - 2
        if not last:
            op = ("Relu", "") if i == 0 else ("LocalRelu", "local")
            nodes.append(helper.make_node(op[0], [f"add{i}"], [f"act{i}"], name=f"/act{i}", domain=op[1]))
            x = f"act{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", onnx_type, ["batch", dims[0]])],
        [helper.make_tensor_value_info("y", onnx_type, ["batch", dims[-1]])],
        inits,
        doc_string="test MLP",
        value_info=[helper.make_tensor_value_info("mm0", onnx_type, ["batch", dims[1]])],
    )
    function = helper.make_function(
        "local",
        "LocalRelu",
        ["X"],
        ["Y"],
        [helper.make_node("Relu", ["X"], ["Y"])],
        [helper.make_opsetid("", OPSET)],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("local", 1)],
        functions=[function],
        producer_name="sparse24-tests",
        doc_string="MLP for sparse24-onnx tests",
    )
    model.ir_version = 8
    helper.set_model_props(model, {"author": "sparse24-onnx tests", "purpose": "fixture"})
    onnx.checker.check_model(model, full_check=True)
    return model


def square_mlp(layers: int, side: int, dtype=np.float32, seed: int = 2) -> onnx.ModelProto:
    """``layers`` MatMuls of ``side x side`` weights, no bias or activation, on a ``[1, side]`` input.

    The benchmarks' model (4 x 2048 x 2048 fp32 is the 64 MiB MLP that polygraphy is timed on);
    every weight is prunable.  Layer ``i`` is the same random matrix scaled by ``1 + i / 10``.
    """
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    weights = np.random.default_rng(seed).standard_normal((side, side), dtype=np.float32)
    inits = [numpy_helper.from_array((weights * (1 + i / 10)).astype(dtype), f"w{i}") for i in range(layers)]
    nodes, x = [], "x"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}"))
        x = f"h{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", onnx_type, [1, side])],
        [helper.make_tensor_value_info("y", onnx_type, [1, side])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mlp_fp16() -> onnx.ModelProto:
    return mlp(dtype=np.float16, seed=1)


def gemm(seed: int = 2) -> onnx.ModelProto:
    """Gemm transB=1 with bias, Relu, Gemm transB=0 with bias."""
    rng = np.random.default_rng(seed)
    inits = [
        _init(rng, "g0.weight", (96, 64)),  # [N, K], transB=1 -> axis 1
        _init(rng, "g0.bias", (96,), scale=0.1),
        _init(rng, "g1.weight", (96, 48)),  # [K, N], transB=0 -> axis 0
        _init(rng, "g1.bias", (48,), scale=0.1),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "g0.weight", "g0.bias"], ["h0"], name="/g0/Gemm", transB=1),
        helper.make_node("Relu", ["h0"], ["r0"], name="/relu"),
        helper.make_node("Gemm", ["r0", "g1.weight", "g1.bias"], ["y"], name="/g1/Gemm", alpha=0.5, beta=2.0),
    ]
    graph = helper.make_graph(
        nodes,
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 48])],
        inits,
    )
    return _model(graph)


def gemm_trans_a(seed: int = 3) -> onnx.ModelProto:
    """Gemm(A=W^T const, B=x) with transA=1, and Gemm whose K (30) is not a multiple of 4."""
    rng = np.random.default_rng(seed)
    inits = [
        _init(rng, "wa", (32, 16)),  # [K, M], transA=1 -> axis 0
        _init(rng, "w30", (30, 8)),  # K=30 -> skipped
    ]
    nodes = [
        helper.make_node("Gemm", ["wa", "x"], ["h"], name="/ga/Gemm", transA=1),  # [16, 32] @ [32, 30]
        helper.make_node("Gemm", ["h", "w30"], ["y"], name="/g30/Gemm"),  # [16, 30] @ [30, 8]
    ]
    graph = helper.make_graph(
        nodes,
        "gemm_trans_a",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 30])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 8])],
        inits,
    )
    return _model(graph)


def matmul_a_const(seed: int = 4) -> onnx.ModelProto:
    """MatMul(W, x) with the constant W [16, 32] as A: grouped along its last axis."""
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["w", "x"], ["y"], name="/left/MatMul")],
        "matmul_a_const",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, "n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, "n"])],
        [_init(rng, "w", (16, 32))],
    )
    return _model(graph)


def transformer(seed: int = 5, vocab: int = 100, d: int = 64, heads: int = 4, ffn: int = 256) -> onnx.ModelProto:
    """One post-norm encoder block: embedding, self-attention, FFN with Gelu (via Erf)."""
    rng = np.random.default_rng(seed)
    hd = d // heads
    f32 = np.float32
    inits = [
        _init(rng, "embed.weight", (vocab, d), scale=1.0),
        numpy_helper.from_array(np.array([0, 0, heads, hd], dtype=np.int64), "heads_shape"),
        numpy_helper.from_array(np.array([0, 0, d], dtype=np.int64), "model_shape"),
        numpy_helper.from_array(np.array(1.0 / np.sqrt(hd), dtype=f32), "scale"),
        numpy_helper.from_array(np.array(1.0 / np.sqrt(2.0), dtype=f32), "inv_sqrt2"),
        numpy_helper.from_array(np.array(0.5, dtype=f32), "half"),
        numpy_helper.from_array(np.array(1.0, dtype=f32), "one"),
        numpy_helper.from_array(np.ones(d, dtype=f32), "ln1.gamma"),
        numpy_helper.from_array(np.zeros(d, dtype=f32), "ln1.beta"),
        numpy_helper.from_array(np.ones(d, dtype=f32), "ln2.gamma"),
        numpy_helper.from_array(np.zeros(d, dtype=f32), "ln2.beta"),
    ]
    nodes = [helper.make_node("Gather", ["embed.weight", "input_ids"], ["emb"], name="/embed/Gather")]
    for proj in ("q", "k", "v", "o"):
        inits.append(_init(rng, f"attn.{proj}.weight", (d, d)))
        inits.append(_init(rng, f"attn.{proj}.bias", (d,), scale=0.02))
    for proj in ("q", "k", "v"):
        nodes += [
            helper.make_node("MatMul", ["emb", f"attn.{proj}.weight"], [f"{proj}_mm"], name=f"/attn/{proj}/MatMul"),
            helper.make_node("Add", [f"{proj}_mm", f"attn.{proj}.bias"], [f"{proj}_b"], name=f"/attn/{proj}/Add"),
            helper.make_node("Reshape", [f"{proj}_b", "heads_shape"], [f"{proj}_h"], name=f"/attn/{proj}/Reshape"),
        ]
    nodes += [
        helper.make_node("Transpose", ["q_h"], ["q_t"], perm=[0, 2, 1, 3], name="/attn/q/Transpose"),
        helper.make_node("Transpose", ["k_h"], ["k_t"], perm=[0, 2, 3, 1], name="/attn/k/Transpose"),
        helper.make_node("Transpose", ["v_h"], ["v_t"], perm=[0, 2, 1, 3], name="/attn/v/Transpose"),
        helper.make_node("MatMul", ["q_t", "k_t"], ["scores"], name="/attn/scores/MatMul"),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"], name="/attn/scale"),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1, name="/attn/Softmax"),
        helper.make_node("MatMul", ["probs", "v_t"], ["ctx"], name="/attn/ctx/MatMul"),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3], name="/attn/ctx/Transpose"),
        helper.make_node("Reshape", ["ctx_t", "model_shape"], ["ctx_m"], name="/attn/ctx/Reshape"),
        helper.make_node("MatMul", ["ctx_m", "attn.o.weight"], ["o_mm"], name="/attn/o/MatMul"),
        helper.make_node("Add", ["o_mm", "attn.o.bias"], ["o_b"], name="/attn/o/Add"),
        helper.make_node("Add", ["o_b", "emb"], ["res1"], name="/res1"),
        helper.make_node("LayerNormalization", ["res1", "ln1.gamma", "ln1.beta"], ["ln1"], axis=-1, name="/ln1"),
    ]
    inits += [
        _init(rng, "ffn.up.weight", (d, ffn)),
        _init(rng, "ffn.up.bias", (ffn,), scale=0.02),
        _init(rng, "ffn.down.weight", (ffn, d)),
        _init(rng, "ffn.down.bias", (d,), scale=0.02),
    ]
    nodes += [
        helper.make_node("MatMul", ["ln1", "ffn.up.weight"], ["up_mm"], name="/ffn/up/MatMul"),
        helper.make_node("Add", ["up_mm", "ffn.up.bias"], ["up"], name="/ffn/up/Add"),
        helper.make_node("Mul", ["up", "inv_sqrt2"], ["g0"], name="/ffn/gelu/div"),
        helper.make_node("Erf", ["g0"], ["g1"], name="/ffn/gelu/Erf"),
        helper.make_node("Add", ["g1", "one"], ["g2"], name="/ffn/gelu/add"),
        helper.make_node("Mul", ["up", "g2"], ["g3"], name="/ffn/gelu/mul"),
        helper.make_node("Mul", ["g3", "half"], ["gelu"], name="/ffn/gelu/half"),
        helper.make_node("MatMul", ["gelu", "ffn.down.weight"], ["down_mm"], name="/ffn/down/MatMul"),
        helper.make_node("Add", ["down_mm", "ffn.down.bias"], ["down"], name="/ffn/down/Add"),
        helper.make_node("Add", ["down", "ln1"], ["res2"], name="/res2"),
        helper.make_node("LayerNormalization", ["res2", "ln2.gamma", "ln2.beta"], ["hidden"], axis=-1, name="/ln2"),
    ]
    graph = helper.make_graph(
        nodes,
        "transformer",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "seq", d])],
        inits,
    )
    return _model(graph)


def skips(seed: int = 6) -> onnx.ModelProto:
    """Weights that must be skipped, each for its own reason, next to one that must be pruned.

    * ``shared.weight``: B of one MatMul (axis 0) and A of another (axis 1): axes disagree.
    * ``tied.weight``: B of a MatMul and also an input of Add: pruning would change the Add.
    * ``int.weight``: int32 MatMul weight: not a float type.
    * ``shadow.weight``: an initializer that is also a graph input (can be overridden).
    * ``vector.weight``: 1-D B of a MatMul.
    * ``ok.weight``: B of a MatMul, also read by Shape: pruned.
    """
    rng = np.random.default_rng(seed)
    f, i32 = TensorProto.FLOAT, TensorProto.INT32
    inits = [
        _init(rng, "shared.weight", (32, 32)),
        _init(rng, "tied.weight", (32, 32)),
        numpy_helper.from_array(rng.integers(-3, 4, (8, 4)).astype(np.int32), "int.weight"),
        _init(rng, "shadow.weight", (32, 32)),
        _init(rng, "vector.weight", (32,)),
        _init(rng, "ok.weight", (32, 32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "shared.weight"], ["a"], name="/shared/B"),
        helper.make_node("MatMul", ["shared.weight", "x_t"], ["b"], name="/shared/A"),
        helper.make_node("MatMul", ["x", "tied.weight"], ["c"], name="/tied/MatMul"),
        helper.make_node("Add", ["c", "tied.weight"], ["d"], name="/tied/Add"),
        helper.make_node("MatMul", ["xi", "int.weight"], ["yi"], name="/int/MatMul"),
        helper.make_node("MatMul", ["x", "shadow.weight"], ["e"], name="/shadow/MatMul"),
        helper.make_node("MatMul", ["x", "vector.weight"], ["v"], name="/vector/MatMul"),
        helper.make_node("MatMul", ["x", "ok.weight"], ["g"], name="/ok/MatMul"),
        helper.make_node("Shape", ["ok.weight"], ["ok_shape"], name="/ok/Shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "skips",
        [
            helper.make_tensor_value_info("x", f, [32, 32]),
            helper.make_tensor_value_info("x_t", f, [32, 32]),
            helper.make_tensor_value_info("xi", i32, [2, 8]),
            helper.make_tensor_value_info("shadow.weight", f, [32, 32]),
        ],
        [helper.make_tensor_value_info(name, f, [32, 32]) for name in ("a", "b", "d", "e", "g")]
        + [
            helper.make_tensor_value_info("v", f, [32]),
        ]
        + [
            helper.make_tensor_value_info("yi", i32, [2, 4]),
            helper.make_tensor_value_info("ok_shape", TensorProto.INT64, [2]),
        ],
        inits,
    )
    return _model(graph)


#: File name -> builder, for every test model.
MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp.onnx": mlp,
    "mlp_fp16.onnx": mlp_fp16,
    "gemm.onnx": gemm,
    "gemm_trans_a.onnx": gemm_trans_a,
    "matmul_a_const.onnx": matmul_a_const,
    "transformer.onnx": transformer,
    "skips.onnx": skips,
    **graph_shapes.MODELS,
    **quantized_models.MODELS,
}


def build_all(folder: str | Path) -> dict[str, Path]:
    """Write every model into ``folder``; return name -> path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, build in MODELS.items():
        paths[name] = folder / name
        onnx.save(build(), paths[name])
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "generated"
    for _name, path in build_all(target).items():
        print(path)
