"""Small convolutional models for the calibration tests: the layouts trained CNNs are exported in.

* :func:`small_cnn`: three 2-D convolutions (3x3 padded, 3x3 stride 2, 1x1) with ReLUs, float32.
* :func:`cast_fp16_cnn`: the same with weights stored in float16 and cast to float32 on their way
  to the Conv (what fp16 converters that keep float32 I/O write).
* :func:`conv_nd`: a 1-D and a 3-D convolution (16 -> 32 channels) side by side.

Quantized (QDQ int8) versions are made in the tests with onnxruntime's own ``quantize_static``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT

__all__ = ["cast_fp16_cnn", "conv_nd", "small_cnn"]


def _weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    return {"conv1.weight": w(32, 16, 3, 3), "conv2.weight": w(32, 32, 3, 3), "conv3.weight": w(32, 32, 1, 1)}


def _model(nodes, inits, inputs, outputs, name: str) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph(nodes, name, inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _convs(weight_names: list[str]) -> list[onnx.NodeProto]:
    return [
        helper.make_node("Conv", ["x", weight_names[0]], ["c1"], name="/conv1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", weight_names[1]], ["c2"], name="/conv2/Conv", strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", weight_names[2]], ["y"], name="/conv3/Conv"),
    ]


_IO = (
    [helper.make_tensor_value_info("x", F, ["batch", 16, "height", "width"])],
    [helper.make_tensor_value_info("y", F, ["batch", 32, None, None])],
)


def small_cnn(seed: int = 40) -> onnx.ModelProto:
    weights = _weights(seed)
    inits = [numpy_helper.from_array(a, n) for n, a in weights.items()]
    return _model(_convs(list(weights)), inits, *_IO, "small_cnn")


def cast_fp16_cnn(seed: int = 40) -> onnx.ModelProto:
    weights = _weights(seed)
    inits = [numpy_helper.from_array(a.astype(np.float16), n) for n, a in weights.items()]
    casts = [helper.make_node("Cast", [n], [f"{n}.f32"], to=F, name=f"/cast/{n}") for n in weights]
    return _model(casts + _convs([f"{n}.f32" for n in weights]), inits, *_IO, "cast_fp16_cnn")


def conv_nd(seed: int = 41) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((32, 16, 5)) / 9).astype(np.float32)
    w3 = (rng.standard_normal((32, 16, 3, 3, 3)) / 20).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["a", "conv1d.weight"], ["ya"], name="/conv1d/Conv", pads=[2, 2], strides=[2]),
        helper.make_node("Conv", ["b", "conv3d.weight"], ["yb"], name="/conv3d/Conv", auto_pad="SAME_UPPER"),
    ]
    inputs = [
        helper.make_tensor_value_info("a", F, ["batch", 16, 40]),
        helper.make_tensor_value_info("b", F, ["batch", 16, 6, 6, 6]),
    ]
    outputs = [
        helper.make_tensor_value_info("ya", F, ["batch", 32, None]),
        helper.make_tensor_value_info("yb", F, ["batch", 32, 6, 6, 6]),
    ]
    inits = [numpy_helper.from_array(w1, "conv1d.weight"), numpy_helper.from_array(w3, "conv3d.weight")]
    return _model(nodes, inits, inputs, outputs, "conv_nd")
