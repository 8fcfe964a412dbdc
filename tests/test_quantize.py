"""``--quantize``: from a float model to a 2:4 INT8/FP8 QDQ model TensorRT's explicit quantization reads.

The per-channel grid and the joint rounding against a plain NumPy reference, the
TensorRT rules check on good and bad QDQ graphs, and the whole run on small models
for int8 and fp8 (onnxruntime runs the output, ``check`` passes, the rules hold, the
compressed format and ``expand`` work).
"""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparse24_onnx import check_model, expand_model, prune_model
from sparse24_onnx.core import is_24
from sparse24_onnx.core.quantized import symmetric_grid
from sparse24_onnx.core.sparsegpt import layer_output_error, sparsegpt_24
from sparse24_onnx.errors import BadInput
from sparse24_onnx.passes.quantize_weights import LOW_TYPES
from sparse24_onnx.validation.tensorrt_rules import tensorrt_violations

from .test_quantized import int8_round, plain_joint_reference


def test_the_grid_is_symmetric_per_output_channel():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 6)).astype(np.float32)  # a MatMul B [K, N]: output channels on axis 1
    w[:, 2] = 0
    for kind, largest in (("int8", 127), ("fp8", 448)):
        grid = symmetric_grid(w, 1, LOW_TYPES[kind].numpy())
        expected = np.abs(w).max(axis=0) / largest
        expected[2] = 1.0  # a channel of zeros: any scale stores it exactly
        np.testing.assert_allclose(grid.scale.reshape(-1), expected, rtol=1e-7)
        assert not np.any(grid.zero_point.astype(np.float32))
        stored = grid.quantize(w)
        # Each channel's largest weight is the grid's largest value, exactly.
        np.testing.assert_array_equal(np.abs(stored.astype(np.float32)).max(axis=0)[[0, 1, 3]], largest)
        np.testing.assert_allclose(
            grid.dequantize(stored), w, atol=float(expected.max()) * (0.5 if kind == "int8" else 16)
        )


def _fp8(values, scale):
    scaled = np.clip(values / scale, -448, 448).astype(np.float32)
    return scaled.astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale


@pytest.mark.parametrize(("kind", "round_value"), [("int8", int8_round), ("fp8", _fp8)])
def test_joint_rounding_on_one_layer_matches_a_plain_reference(kind, round_value):
    rng = np.random.default_rng(1)
    rows, k = 8, 32
    x = rng.standard_normal((300, k)) @ rng.standard_normal((k, k))
    w = rng.standard_normal((rows, k)).astype(np.float32).astype(np.float64)
    grid = symmetric_grid(w, 0, LOW_TYPES[kind].numpy())  # (rows, K): one scale per row, the output channel
    h = x.T @ x
    ours = sparsegpt_24(w, h, damp=0.01, block=8, grid=grid)
    scale = grid.scale.reshape(-1).astype(np.float32)
    np.testing.assert_allclose(ours, plain_joint_reference(w, h, 0.01, scale, round_value), rtol=1e-6, atol=1e-9)
    assert is_24(ours, 1)
    np.testing.assert_array_equal(grid.round(ours), ours.astype(np.float32))  # every value a grid point
    # The joint sweep compensates the rounding: better than rounding SparseGPT's float result afterwards.
    after = grid.round(sparsegpt_24(w, h, damp=0.01, block=8))
    assert layer_output_error(w, ours, h) < layer_output_error(w, after, h)


# ---------------------------------------------------------------- TensorRT's rules on hand-built graphs


def _qdq_mlp(*, zero=0, zero_type=TensorProto.INT8, act_scale_shape=(), axis=1, between=None, act_pair=True):
    """x -> [Q -> DQ] -> MatMul(W: int8 -> DQ(axis)) -> y, with one thing changed per call."""
    rng = np.random.default_rng(0)
    k, n = 8, 4
    q = rng.integers(-127, 128, (k, n)).astype(np.int8)
    scales = (rng.random(n if axis == 1 else k) + 0.5).astype(np.float32) / 127
    inits = [
        numpy_helper.from_array(q, "w_q"),
        numpy_helper.from_array(scales, "w_s"),
        helper.make_tensor("w_z", zero_type, [scales.size], [zero] * scales.size),
        numpy_helper.from_array(np.full(act_scale_shape, 0.02, np.float32), "x_s"),
        helper.make_tensor("x_z", zero_type, [], [zero]),
    ]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="w_dq", axis=axis)]
    weight = "w"
    if between:
        nodes.append(helper.make_node(between, ["w"], ["w2"], name="between"))
        weight = "w2"
    data = "x"
    if act_pair:
        nodes.append(helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["xq"], name="x_q", axis=1))
        nodes.append(helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="x_dq", axis=1))
        data = "xd"
    nodes.append(helper.make_node("MatMul", [data, weight], ["y"], name="mm"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, n])], inits,
    )  # fmt: skip
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({}, None),
        ({"zero_type": TensorProto.FLOAT8E4M3FN}, None),
        ({"zero": 3}, "non-zero zero point"),
        ({"zero_type": TensorProto.UINT8}, "quantizes to UINT8"),
        ({"act_scale_shape": (8,)}, "an activation's scale must be one value"),
        ({"axis": 0}, "per-channel along axis 0"),
        ({"between": "Identity"}, "feed the MatMul/Gemm/Conv directly"),
        ({"act_pair": False}, "float data input"),
    ],
)
def test_tensorrt_rules_on_good_and_bad_qdq_graphs(change, message):
    problems = tensorrt_violations(_qdq_mlp(**change))
    if message is None:
        assert problems == []
    else:
        assert any(message in line for line in problems), problems


def test_a_quantize_read_by_anything_but_its_dequantize_breaks_the_rules():
    model = _qdq_mlp()
    relu = ir.node("Relu", [next(n for n in model.graph if n.name == "x_q").outputs[0]], num_outputs=1)
    model.graph.append(relu)
    assert any("read by Relu" in line for line in tensorrt_violations(model))


# ---------------------------------------------------------------- the whole run


def _calibration(rng, count=8, rows=16, width=64):
    return [{"x": rng.standard_normal((rows, width)).astype(np.float32)} for _ in range(count)]


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_quantize_writes_a_2_4_qdq_model_tensorrt_reads(models_dir, tmp_path, kind):
    rng = np.random.default_rng(0)
    calibration, held = _calibration(rng), _calibration(rng, count=2)
    out = tmp_path / f"{kind}.onnx"
    result = prune_model(models_dir / "mlp.onnx", out, calibration=calibration, inputs=held, quantize=kind)
    report = result.report
    entry = report["quantize"]
    assert entry["type"] == kind
    assert entry["weights"] == 3
    assert entry["left_float"] == []
    assert entry["tensorrt_rules"]["violations"] == []
    assert set(entry["activations"]) == {"x", "act0", "act1"}
    stored = {"int8": "INT8", "fp8": "FLOAT8E4M3FN"}[kind]
    for tensor in report["tensors"]:
        assert tensor["status"] == "pruned"
        made = tensor["quantization"]["quantized_by"]
        assert made["type"] == stored
        assert 0 < made["rounding_error"] < (0.02 if kind == "int8" else 0.06)
        assert tensor["quantization"]["symmetric"]
    # The file: low-type weights behind per-channel DequantizeLinear, Q/DQ pairs on the data inputs.
    model = onnx.load(out)
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert types["fc0.weight"] == getattr(TensorProto, stored)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 3
    assert ops.count("DequantizeLinear") == 6
    assert tensorrt_violations(ir.load(out)) == []
    assert check_model(out).passed
    assert report["validation"]["worst_rel_l2_error"] < 0.6


def test_fp8_outputs_are_validated_as_written(models_dir, tmp_path):
    """onnxruntime (1.32, CPU) drops a Relu before an FP8 QuantizeLinear; the tool's sessions keep the graph as
    written, so validation measures the model TensorRT builds, equal to onnxruntime with no rewrites at all."""
    rng = np.random.default_rng(0)
    held = _calibration(rng, count=1, rows=1)
    out = tmp_path / "fp8.onnx"
    result = prune_model(models_dir / "mlp.onnx", out, calibration=_calibration(rng), inputs=held, quantize="fp8")
    written = ort.SessionOptions()
    written.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    plain = ort.InferenceSession(out, written, providers=["CPUExecutionProvider"]).run(None, held[0])[0]
    reference = ort.InferenceSession(models_dir / "mlp.onnx", providers=["CPUExecutionProvider"]).run(None, held[0])[0]
    error = np.linalg.norm(plain - reference) / np.linalg.norm(reference)
    assert result.report["validation"]["worst_rel_l2_error"] == pytest.approx(error, rel=1e-4)


def test_quantized_output_compresses_and_expands(models_dir, tmp_path):
    rng = np.random.default_rng(0)
    calibration = _calibration(rng)
    dense, compressed = tmp_path / "dense.onnx", tmp_path / "compressed.onnx"
    options = {"calibration": calibration, "quantize": "int8", "validate": False}
    prune_model(models_dir / "mlp.onnx", dense, **options)
    result = prune_model(models_dir / "mlp.onnx", compressed, format="compressed", **options)
    assert {t["storage"] for t in result.report["tensors"]} == {"compressed"}
    expanded = tmp_path / "expanded.onnx"
    expand_model(compressed, expanded)
    want = {i.name: numpy_helper.to_array(i) for i in onnx.load(dense).graph.initializer}
    got = {i.name: numpy_helper.to_array(i) for i in onnx.load(expanded).graph.initializer}
    for name in ("fc0.weight", "fc1.weight", "fc2.weight"):
        np.testing.assert_array_equal(got[name], want[name])
    assert check_model(expanded).passed
    assert tensorrt_violations(ir.load(expanded)) == []


def test_weights_that_cannot_take_the_form_stay_float_and_say_why(models_dir, tmp_path):
    """A weight reaching its MatMul through a Cast and a Transpose stays float (and pruned), with the reason."""
    model = onnx.load(models_dir / "cast_transpose.onnx")
    feeds = {i.name: i for i in model.graph.input}
    rng = np.random.default_rng(0)
    name = next(iter(feeds))
    shape = [d.dim_value or 4 for d in feeds[name].type.tensor_type.shape.dim]
    calibration = [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(8)]
    result = prune_model(
        models_dir / "cast_transpose.onnx", tmp_path / "o.onnx", calibration=calibration, quantize="int8",
        validate=False,
    )  # fmt: skip
    left = result.report["quantize"]["left_float"]
    assert left
    assert all("through" in entry["why"] for entry in left)
    assert any("left" in w and "float" in w for w in result.warnings)


def test_quantize_is_refused_where_it_cannot_apply(models_dir, tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(BadInput, match="needs a calibrated method"):
        prune_model(models_dir / "mlp.onnx", tmp_path / "o.onnx", quantize="int8")
    with pytest.raises(BadInput, match="not supported together yet"):
        prune_model(models_dir / "mlp.onnx", tmp_path / "o.onnx", quantize="int8", permute=True,
                    calibration=_calibration(rng))  # fmt: skip
    with pytest.raises(BadInput, match="steers quantize="):
        prune_model(models_dir / "mlp.onnx", tmp_path / "o.onnx", activation_calibration="entropy")
    with pytest.raises(BadInput, match="quantized already"):
        prune_model(models_dir / "quantized.onnx", tmp_path / "o.onnx", quantize="int8",
                    calibration=_calibration(rng, width=64))  # fmt: skip
    assert not (tmp_path / "o.onnx").exists()


def test_quantize_from_the_command_line(models_dir, tmp_path):
    from sparse24_onnx.optimize import main as optimize_main

    rng = np.random.default_rng(0)
    folder = tmp_path / "cal"
    folder.mkdir()
    for i, feed in enumerate(_calibration(rng)):
        np.savez(folder / f"{i}.npz", **feed)
    report = tmp_path / "r.json"
    code = optimize_main([
        str(models_dir / "mlp.onnx"), str(tmp_path / "o.onnx"), "--calibration", str(folder), "--quantize", "int8",
        "--activation-calibration", "percentile", "--report", str(report), "-q",
    ])  # fmt: skip
    assert code == 0
    entry = json.loads(report.read_text())["quantize"]
    assert entry["activation_calibration"] == "percentile"
    assert entry["tensorrt_rules"]["violations"] == []


def test_check_tensorrt_gates_on_the_rules(models_dir, tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "int8.onnx"
    prune_model(models_dir / "mlp.onnx", out, calibration=_calibration(rng), quantize="int8", validate=False)
    assert check_model(out, tensorrt=True).passed
    model = onnx.load(out)
    zero = next(i for i in model.graph.initializer if i.name == "x_act_zero_point")
    zero.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), "x_act_zero_point"))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, broken)
    assert check_model(broken).passed  # still 2:4
    result = check_model(broken, tensorrt=True)
    assert result.exit_code == 1
    assert any("non-zero zero point" in v for v in result.report["tensorrt_rules"]["violations"])
    assert result.verdict.startswith("FAIL: ")


def _quantized(source, out, width, dtype=np.float32):
    """``--quantize int8`` of a one-input model, validated on two of its calibration feeds."""
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((16, width)).astype(dtype)} for _ in range(8)]
    return prune_model(source, out, calibration=calibration, quantize="int8", inputs=calibration[:2])


def test_weights_held_in_constant_nodes_are_quantized_too(models_dir, tmp_path):
    """Exporters such as Paddle's hold every weight in a Constant node: those take the form as well."""
    out = tmp_path / "o.onnx"
    result = _quantized(models_dir / "constant_nodes.onnx", out, 32)
    entry = result.report["quantize"]
    assert entry["weights"] >= 2
    assert not any("Constant" in e["why"] or "subgraph" in e["why"] for e in entry["left_float"])
    assert entry["tensorrt_rules"]["violations"] == []
    model = onnx.load(out)
    constants = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    low = [name for name, node in constants.items() if node.attribute[0].t.data_type == TensorProto.INT8]
    assert len(low) == entry["weights"]
    assert check_model(out, tensorrt=True).passed


def test_every_activation_calibration_choice_names_an_onnxruntime_calibrator():
    from onnxruntime.quantization.calibrate import CalibrationMethod

    from sparse24_onnx.calibration.activation_ranges import _ORT_NAMES
    from sparse24_onnx.choices import ACTIVATION_CALIBRATIONS

    assert set(_ORT_NAMES) == set(ACTIVATION_CALIBRATIONS)
    assert all(hasattr(CalibrationMethod, name) for name in _ORT_NAMES.values())


def test_a_float16_model_keeps_its_type_through_the_dequantization(models_dir, tmp_path):
    """DequantizeLinear gives back the weight's own float type: float16 scales, which need opset 19."""
    out = tmp_path / "o.onnx"
    result = _quantized(models_dir / "mlp_fp16.onnx", out, 64, np.float16)
    assert any("converted from opset 17 to 19" in w for w in result.warnings)
    model = onnx.load(out)
    scales = {i.name: i.data_type for i in model.graph.initializer if i.name.endswith("_scale")}
    assert scales
    assert set(scales.values()) == {TensorProto.FLOAT16}
    assert result.report["quantize"]["tensorrt_rules"]["violations"] == []
    assert result.report["validation"]["worst_rel_l2_error"] < 0.6
