"""Hand-built quantized graphs: the forms onnxruntime's own quantizer does not write.

Each is a small MLP ``x[batch, 64] -> MatMul(64x32) -> Relu -> MatMul(32x16)`` (or
a Gemm / Conv) whose weights reach their products through one quantized form:

* ``qcdq.onnx``: float weights -> QuantizeLinear (int8, per channel) -> Clip -> DequantizeLinear
  (the QCDQ export of pytorch-quantization and ModelOpt).
* ``fp8.onnx`` (opset 19): a float8 e4m3fn weight -> DequantizeLinear, and a float weight
  fake-quantized to float8 e5m2 (QuantizeLinear -> DequantizeLinear).
* ``blocked.onnx`` (opset 21): int8 weights with blocked scales (32 rows per block) ->
  DequantizeLinear(axis 0, block_size 32), and an int4 weight per channel.
* ``uint8_zero_point.onnx``: uint8 weights with non-zero per-channel zero points (asymmetric).
* ``weight_only.onnx``: int8 -> Cast -> Sub(zero point) -> Mul(scale) -> MatMul, and
  int8 -> Cast -> Mul(scale) -> Gemm(transB=1) (weight-only int8 exports).
* ``conv_int8.onnx``: a per-channel int8 Conv weight -> DequantizeLinear -> Conv.
* ``rank_change.onnx``: int8 -> Cast -> Mul by a scale of higher rank -> Transpose -> MatMul
  (the tracing must skip it with a reason), and int8 -> DequantizeLinear -> Reshape(1x64x32)
  -> MatMul (the reduction axis survives the reshape: pruned).

Scales are chosen so that dequantized weights have unit-ish size; every model runs in
onnxruntime (tests check that, before and after pruning).
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT
DIMS = (64, 32, 16)


def _finish(nodes, inits, opset: int, name: str) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", F, ["batch", DIMS[0]])],
        [helper.make_tensor_value_info("y", F, ["batch", DIMS[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10 if opset >= 21 else 9 if opset >= 19 else 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _int8(rng, shape, scale_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 quantization of a random weight: (q, scale along ``scale_axis``)."""
    w = (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)
    amax = np.abs(w).max(axis=tuple(a for a in range(len(shape)) if a != scale_axis))
    scale = (amax / 127).astype(np.float32)
    shaped = scale.reshape([-1 if a == scale_axis else 1 for a in range(len(shape))])
    return np.clip(np.rint(w / shaped), -127, 127).astype(np.int8), scale


def qcdq(seed: int = 30) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for i, (k, n) in enumerate(itertools.pairwise(DIMS)):
        w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32)
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"fc{i}.weight"),
            numpy_helper.from_array(scale, f"fc{i}.scale"),
            numpy_helper.from_array(np.zeros(n, np.int8), f"fc{i}.zero"),
            numpy_helper.from_array(np.array(-127, np.int8), f"fc{i}.lo"),
            numpy_helper.from_array(np.array(127, np.int8), f"fc{i}.hi"),
        ]
        q = [f"fc{i}.weight", f"fc{i}.scale", f"fc{i}.zero"]
        nodes += [
            helper.make_node("QuantizeLinear", q, [f"fc{i}.q"], axis=1, name=f"/fc{i}/QuantizeLinear"),
            helper.make_node("Clip", [f"fc{i}.q", f"fc{i}.lo", f"fc{i}.hi"], [f"fc{i}.c"], name=f"/fc{i}/Clip"),
            helper.make_node(
                "DequantizeLinear", [f"fc{i}.c", f"fc{i}.scale", f"fc{i}.zero"], [f"fc{i}.w"], axis=1,
                name=f"/fc{i}/DequantizeLinear",
            ),
            helper.make_node("MatMul", [x, f"fc{i}.w"], [f"h{i}"], name=f"/fc{i}/MatMul"),
        ]  # fmt: skip
        x = f"h{i}"
    nodes.append(helper.make_node("Relu", [x], ["y"], name="/relu"))
    return _finish(nodes, inits, 17, "qcdq")


def fp8(seed: int = 31) -> onnx.ModelProto:
    import ml_dtypes

    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((64, 32)).astype(np.float32) / 8
    scale0 = np.float32(np.abs(w0).max() / 448)
    q0 = (w0 / scale0).astype(ml_dtypes.float8_e4m3fn)
    stored = helper.make_tensor("fc0.weight", TensorProto.FLOAT8E4M3FN, q0.shape, q0.view(np.uint8).tobytes(), raw=True)
    zero0 = helper.make_tensor("fc0.zero", TensorProto.FLOAT8E4M3FN, [], b"\x00", raw=True)
    w1 = (rng.standard_normal((32, 16)) / np.sqrt(32)).astype(np.float32)
    zero1 = helper.make_tensor("fc1.zero", TensorProto.FLOAT8E5M2, [], b"\x00", raw=True)
    inits = [
        stored,
        numpy_helper.from_array(np.array(scale0), "fc0.scale"),
        zero0,
        numpy_helper.from_array(w1, "fc1.weight"),
        numpy_helper.from_array(np.array(np.abs(w1).max() / 57344 * 64, np.float32), "fc1.scale"),
        zero1,
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["fc0.weight", "fc0.scale", "fc0.zero"], ["fc0.w"], name="/fc0/DQ"),
        helper.make_node("MatMul", ["x", "fc0.w"], ["h0"], name="/fc0/MatMul"),
        helper.make_node("Relu", ["h0"], ["r0"], name="/relu0"),
        helper.make_node("QuantizeLinear", ["fc1.weight", "fc1.scale", "fc1.zero"], ["fc1.q"], name="/fc1/Q"),
        helper.make_node("DequantizeLinear", ["fc1.q", "fc1.scale", "fc1.zero"], ["fc1.w"], name="/fc1/DQ"),
        helper.make_node("MatMul", ["r0", "fc1.w"], ["y"], name="/fc1/MatMul"),
    ]
    return _finish(nodes, inits, 19, "fp8")


def _pack4(values: np.ndarray) -> bytes:
    """4-bit values packed two per byte, the first in the low nibble (ONNX's raw_data layout)."""
    nibbles = values.astype(np.int8).reshape(-1).astype(np.uint8) & 0x0F
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def blocked(seed: int = 32) -> onnx.ModelProto:
    import ml_dtypes

    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal((64, 32)).astype(np.float32) / 8
    blocks = w0.reshape(2, 32, 32)
    scale0 = (np.abs(blocks).max(axis=1) / 127).astype(np.float32)  # [2, 32]: one scale per 32 rows and column
    q0 = np.clip(np.rint(blocks / scale0[:, None, :]), -127, 127).astype(np.int8).reshape(64, 32)
    w1 = (rng.standard_normal((32, 16)) / np.sqrt(32)).astype(np.float32)
    scale1 = (np.abs(w1).max(axis=0) / 7).astype(np.float32)
    q1 = np.clip(np.rint(w1 / scale1), -7, 7).astype(ml_dtypes.int4)
    inits = [
        numpy_helper.from_array(q0, "fc0.weight"),
        numpy_helper.from_array(scale0, "fc0.scale"),
        helper.make_tensor("fc1.weight", TensorProto.INT4, q1.shape, _pack4(q1), raw=True),
        numpy_helper.from_array(scale1, "fc1.scale"),
    ]
    nodes = [
        helper.make_node(
            "DequantizeLinear", ["fc0.weight", "fc0.scale"], ["fc0.w"], axis=0, block_size=32, name="/fc0/DQ"
        ),
        helper.make_node("MatMul", ["x", "fc0.w"], ["h0"], name="/fc0/MatMul"),
        helper.make_node("Relu", ["h0"], ["r0"], name="/relu0"),
        helper.make_node("DequantizeLinear", ["fc1.weight", "fc1.scale"], ["fc1.w"], axis=1, name="/fc1/DQ"),
        helper.make_node("MatMul", ["r0", "fc1.w"], ["y"], name="/fc1/MatMul"),
    ]
    return _finish(nodes, inits, 21, "blocked")


def uint8_zero_point(seed: int = 33) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits, nodes, x = [], [], "x"
    for i, (k, n) in enumerate(itertools.pairwise(DIMS)):
        w = (rng.standard_normal((k, n)) / np.sqrt(k) + 0.05).astype(np.float32)  # skewed: asymmetric ranges
        low, high = w.min(axis=0), w.max(axis=0)
        scale = ((high - low) / 255).astype(np.float32)
        zero = np.clip(np.rint(-low / scale), 0, 255).astype(np.uint8)
        q = np.clip(np.rint(w / scale) + zero, 0, 255).astype(np.uint8)
        inits += [
            numpy_helper.from_array(q, f"fc{i}.weight"),
            numpy_helper.from_array(scale, f"fc{i}.scale"),
            numpy_helper.from_array(zero, f"fc{i}.zero"),
        ]
        dq = [f"fc{i}.weight", f"fc{i}.scale", f"fc{i}.zero"]
        nodes += [
            helper.make_node("DequantizeLinear", dq, [f"fc{i}.w"], axis=1, name=f"/fc{i}/DQ"),
            helper.make_node("MatMul", [x, f"fc{i}.w"], [f"h{i}"], name=f"/fc{i}/MatMul"),
        ]
        x = f"h{i}"
    nodes.append(helper.make_node("Relu", [x], ["y"], name="/relu"))
    return _finish(nodes, inits, 17, "uint8_zero_point")


def weight_only(seed: int = 34) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    q0, scale0 = _int8(rng, (64, 32), 1)
    zero0 = rng.integers(-3, 4, 32).astype(np.float32)  # stored already shifted by its zero point
    q0 = np.clip(q0.astype(np.int32) + zero0.astype(np.int32), -128, 127).astype(np.int8)
    q1, scale1 = _int8(rng, (16, 32), 0)  # Gemm transB=1: [N, K], scaled per output row
    inits = [
        numpy_helper.from_array(q0, "fc0.weight"),
        numpy_helper.from_array(zero0, "fc0.zero"),
        numpy_helper.from_array(scale0, "fc0.scale"),
        numpy_helper.from_array(q1, "fc1.weight"),
        numpy_helper.from_array(scale1.reshape(16, 1), "fc1.scale"),
    ]
    nodes = [
        helper.make_node("Cast", ["fc0.weight"], ["fc0.f"], to=F, name="/fc0/Cast"),
        helper.make_node("Sub", ["fc0.f", "fc0.zero"], ["fc0.c"], name="/fc0/Sub"),
        helper.make_node("Mul", ["fc0.c", "fc0.scale"], ["fc0.w"], name="/fc0/Mul"),
        helper.make_node("MatMul", ["x", "fc0.w"], ["h0"], name="/fc0/MatMul"),
        helper.make_node("Relu", ["h0"], ["r0"], name="/relu0"),
        helper.make_node("Cast", ["fc1.weight"], ["fc1.f"], to=F, name="/fc1/Cast"),
        helper.make_node("Mul", ["fc1.scale", "fc1.f"], ["fc1.w"], name="/fc1/Mul"),
        helper.make_node("Gemm", ["r0", "fc1.w"], ["y"], transB=1, name="/fc1/Gemm"),
    ]
    return _finish(nodes, inits, 17, "weight_only")


def conv_int8(seed: int = 35) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    q, scale = _int8(rng, (32, 16, 3, 3), 0)
    inits = [
        numpy_helper.from_array(q, "conv.weight"),
        numpy_helper.from_array(scale, "conv.scale"),
        numpy_helper.from_array(np.zeros(32, np.int8), "conv.zero"),
    ]
    nodes = [
        helper.make_node(
            "DequantizeLinear", ["conv.weight", "conv.scale", "conv.zero"], ["conv.w"], axis=0, name="/conv/DQ"
        ),
        helper.make_node("Conv", ["x", "conv.w"], ["y"], pads=[1, 1, 1, 1], name="/conv/Conv"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_int8",
        [helper.make_tensor_value_info("x", F, ["batch", 16, 8, 8])],
        [helper.make_tensor_value_info("y", F, ["batch", 32, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def rank_change(seed: int = 36) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    q0, scale0 = _int8(rng, (32, 64), 0)  # stored [N, K]; transposed to [K, N] after the dequantizing Mul
    q1, scale1 = _int8(rng, (32, 16), 1)
    inits = [
        numpy_helper.from_array(q0, "bcast.weight"),
        numpy_helper.from_array(scale0.reshape(1, 32, 1), "bcast.scale"),  # rank 3: broadcasts [32, 64] up
        numpy_helper.from_array(q1, "reshaped.weight"),
        numpy_helper.from_array(scale1, "reshaped.scale"),
        numpy_helper.from_array(np.array([1, 32, 16], np.int64), "reshaped.shape"),
    ]
    nodes = [
        helper.make_node("Cast", ["bcast.weight"], ["bcast.f"], to=F, name="/bcast/Cast"),
        helper.make_node("Mul", ["bcast.f", "bcast.scale"], ["bcast.m"], name="/bcast/Mul"),
        helper.make_node("Transpose", ["bcast.m"], ["bcast.w"], perm=[0, 2, 1], name="/bcast/Transpose"),
        helper.make_node("MatMul", ["x", "bcast.w"], ["h0"], name="/bcast/MatMul"),  # [1, 64] @ [1, 64, 32]
        helper.make_node("Relu", ["h0"], ["r0"], name="/relu0"),
        helper.make_node("DequantizeLinear", ["reshaped.weight", "reshaped.scale"], ["reshaped.dq"], axis=1,
                         name="/reshaped/DQ"),
        helper.make_node("Reshape", ["reshaped.dq", "reshaped.shape"], ["reshaped.w"], name="/reshaped/Reshape"),
        helper.make_node("MatMul", ["r0", "reshaped.w"], ["h1"], name="/reshaped/MatMul"),  # [1, 1, 16]
        helper.make_node("Squeeze", ["h1"], ["y"], name="/squeeze"),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "rank_change",
        [helper.make_tensor_value_info("x", F, [1, 64])],
        [helper.make_tensor_value_info("y", F, [16])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


MODELS = {
    "qcdq.onnx": qcdq,
    "fp8.onnx": fp8,
    "blocked.onnx": blocked,
    "uint8_zero_point.onnx": uint8_zero_point,
    "weight_only.onnx": weight_only,
    "conv_int8.onnx": conv_int8,
    "rank_change.onnx": rank_change,
}
