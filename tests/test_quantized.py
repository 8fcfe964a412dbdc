"""Quantized weights: every form pruned through its dequantization, checked, calibrated, stored, streamed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from sparse24_onnx import check_model, expand_model, prune_model
from sparse24_onnx.core import is_24, prune_24_dense
from sparse24_onnx.core.quantized import QuantGrid
from sparse24_onnx.core.sparsegpt import layer_output_error, sparsegpt_24
from sparse24_onnx.optimize import main as optimize_main

from .helpers import packaged_file

#: model -> {weight: axis of its groups of 4 (stored layout)} for the hand-built forms.
FORMS = {
    "qcdq.onnx": {"fc0.weight": 0, "fc1.weight": 0},
    "fp8.onnx": {"fc0.weight": 0, "fc1.weight": 0},
    "blocked.onnx": {"fc0.weight": 0, "fc1.weight": 0},
    "uint8_zero_point.onnx": {"fc0.weight": 0, "fc1.weight": 0},
    "weight_only.onnx": {"fc0.weight": 0, "fc1.weight": 1},
    "conv_int8.onnx": {"conv.weight": 1},
}


def stored(path: Path) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load(str(path)).graph.initializer}


def dequantized(path: Path, names: dict[str, int]) -> dict[str, np.ndarray]:
    """Each weight as its product reads it (the value ``<prefix>.w`` in these models), computed by onnxruntime."""
    model = onnx.load(str(path))
    outputs = {name: name.split(".")[0] + ".w" for name in names}
    for output in outputs.values():
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(output))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {
        i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in session.get_inputs()
    }
    values = dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    return {weight: values[output] for weight, output in outputs.items()}


@pytest.mark.parametrize("name", list(FORMS))
def test_every_quantized_form_is_pruned_through_its_dequantization(models_dir, tmp_path, name):
    source, out, report = models_dir / name, tmp_path / name, tmp_path / "r.json"
    assert optimize_main([str(source), str(out), "-q", "--tc-shapes", "off", "--report", str(report)]) == 0
    document = json.loads(report.read_text())
    entries = {t["name"]: t for t in document["tensors"]}
    assert {n for n, t in entries.items() if t["status"] == "pruned"} == set(FORMS[name])
    before, after = stored(source), stored(out)
    for weight, axis in FORMS[name].items():
        assert after[weight].data_type == before[weight].data_type  # stored type unchanged
        assert entries[weight]["axis"] == axis
        assert entries[weight]["quantization"]["form"]
    # What the product reads is 2:4 along the reduction axis (through the real scales and zero points).
    real = dequantized(out, FORMS[name])
    for weight, axis in FORMS[name].items():
        assert is_24(real[weight], axis), weight
        assert not is_24(dequantized(source, FORMS[name])[weight], axis)
    # onnxruntime runs the result, check passes on it and fails on the original.
    assert check_model(out, tc_shapes="off").passed
    assert check_model(source, tc_shapes="off").exit_code == 1
    assert document["validation"]["worst_rel_l2_error"] > 0


def test_pruned_entries_are_the_zero_point_and_kept_entries_are_untouched(models_dir, tmp_path):
    source, out = models_dir / "uint8_zero_point.onnx", tmp_path / "u.onnx"
    result = prune_model(source, out, tc_shapes="off")
    before = numpy_helper.to_array(stored(source)["fc0.weight"])
    after = numpy_helper.to_array(stored(out)["fc0.weight"])
    zero = numpy_helper.to_array(stored(source)["fc0.zero"])
    changed = after != before
    assert np.all(after[changed] == np.broadcast_to(zero, after.shape)[changed])  # pruned: the zero point
    centred = after.astype(np.int32) - zero.astype(np.int32)
    assert is_24(centred, 0)
    scale = numpy_helper.to_array(stored(source)["fc0.scale"])
    real = (before.astype(np.float32) - zero) * scale
    # Magnitude of the *dequantized* values chose the kept ones (scales differ between columns).
    np.testing.assert_array_equal(centred != 0, prune_24_dense(real, 0) != 0)
    entry = next(t for t in result.report["tensors"] if t["name"] == "fc0.weight")
    assert entry["quantization"]["symmetric"] is False
    assert "TensorRT" in entry["quantization"]["tensorrt"]
    assert any("TensorRT" in w for w in result.report["warnings"])
    assert "uint8/DQ" in result.table()


def test_a_tracing_gap_is_a_skip_with_a_reason_never_an_internal_error(models_dir, tmp_path):
    result = prune_model(models_dir / "rank_change.onnx", tmp_path / "r.onnx", tc_shapes="off")
    entries = {t["name"]: t for t in result.report["tensors"]}
    assert entries["bcast.weight"]["status"] == "skipped"
    assert "broadcasts the weight from rank 2 to rank 3" in entries["bcast.weight"]["reason"]
    # The reduction axis survives a Reshape to [1, 32, 16]: pruned along the stored axis 0.
    assert entries["reshaped.weight"]["status"] == "pruned"
    assert entries["reshaped.weight"]["axis"] == 0


def int8_round(values, scale):
    return np.clip(np.rint(values / scale), -128, 127) * scale


def plain_joint_reference(w, h, damp, scale, round_value=int8_round):
    """SparseGPT's joint sparsify-and-quantize sweep, one column at a time: each column rounded on its rows'
    grid (``scale``: one per row, zero point 0) by ``round_value(values, scale)``."""
    w = w.astype(np.float64).copy()
    h = h.astype(np.float64) + np.eye(w.shape[1]) * damp * np.mean(np.diag(h))
    u = np.linalg.cholesky(np.linalg.inv(h)).T
    pruned = np.zeros_like(w, dtype=bool)
    for i in range(w.shape[1]):
        if i % 4 == 0:
            scores = w[:, i : i + 4] ** 2 / np.diag(u)[i : i + 4] ** 2
            order = np.argsort(-scores, axis=1, kind="stable")
            pruned[:, i : i + 4] = True
            np.put_along_axis(pruned[:, i : i + 4], order[:, :2], False, axis=1)
        q = np.where(pruned[:, i], 0.0, round_value(w[:, i], scale))
        err = (w[:, i] - q) / u[i, i]
        w[:, i:] -= np.outer(err, u[i, i:])
        w[:, i] = q
    return w


def test_sparsegpt_on_int8_keeps_the_stored_integers_on_the_grid():
    rng = np.random.default_rng(0)
    rows, k = 8, 32
    x = rng.standard_normal((300, k)) @ rng.standard_normal((k, k))
    real = rng.standard_normal((rows, k))
    scale = (np.abs(real).max(axis=1, keepdims=True) / 127).astype(np.float32)
    q = np.clip(np.rint(real / scale), -127, 127).astype(np.int8)
    grid = QuantGrid(np.dtype(np.int8), scale, np.zeros((1, 1), np.int8))
    w = grid.dequantize(q).astype(np.float64)
    h = x.T @ x
    ours = sparsegpt_24(w, h, damp=0.01, block=8, grid=grid)
    np.testing.assert_allclose(
        ours, plain_joint_reference(w, h, 0.01, scale[:, 0].astype(np.float32)), rtol=1e-6, atol=1e-9
    )
    assert is_24(ours, 1)
    integers = grid.quantize(ours)
    np.testing.assert_array_equal(grid.dequantize(integers), ours.astype(np.float32))  # exactly on the grid
    # The rounding is compensated too: better than rounding plain SparseGPT's result afterwards.
    rounded_after = grid.round(sparsegpt_24(w, h, damp=0.01, block=8))
    assert layer_output_error(w, ours, h) < layer_output_error(w, rounded_after, h)


def test_sparsegpt_through_dequantize_linear_from_the_command_line(models_dir, tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "cal").mkdir()
    for i in range(4):
        np.savez(tmp_path / "cal" / f"{i}.npz", x=rng.standard_normal((8, 64)).astype(np.float32))
    out = tmp_path / "b.onnx"
    result = prune_model(
        models_dir / "blocked.onnx",
        out,
        method="sparsegpt",
        calibration=str(tmp_path / "cal"),
        tc_shapes="off",
        tune=False,
    )
    entries = {t["name"]: t for t in result.report["tensors"]}
    assert entries["fc0.weight"]["calibration"]["solver"] == "sparsegpt"  # statistics captured through the DQ
    assert entries["fc0.weight"]["calibration"]["layer_output_error"] > 0
    q = numpy_helper.to_array(stored(out)["fc0.weight"])
    assert q.dtype == np.int8
    assert is_24(q, 0)
    assert check_model(out, tc_shapes="off").passed


@pytest.mark.parametrize(("name", "compressed"), [("conv_int8.onnx", {"conv.weight"}), ("fp8.onnx", None)])
def test_compressed_format_for_symmetric_quantized_weights(models_dir, tmp_path, name, compressed):
    dense, packed = tmp_path / "d.onnx", tmp_path / "c.onnx"
    prune_model(models_dir / name, dense, tc_shapes="off", validate=False)
    result = prune_model(models_dir / name, packed, tc_shapes="off", format="compressed")
    expected = compressed or set(FORMS[name])
    assert {t["name"] for t in result.report["tensors"] if t["storage"] == "compressed"} == expected
    assert (
        result.report["validation"]["worst_rel_l2_error"]
        == prune_model(models_dir / name, tmp_path / "again.onnx", tc_shapes="off").report["validation"][
            "worst_rel_l2_error"
        ]
    )  # the same outputs as the dense-pruned model
    expanded = expand_model(packed, tmp_path / "e.onnx").output
    a, b = stored(expanded), stored(dense)
    assert all(a[n].raw_data == b[n].raw_data and a[n].data_type == b[n].data_type for n in b)


def test_asymmetric_and_4_bit_weights_stay_dense_in_the_compressed_format(models_dir, tmp_path):
    for name, reason in (("uint8_zero_point.onnx", "zero point is not 0"), ("blocked.onnx", "4-bit")):
        result = prune_model(models_dir / name, tmp_path / name, tc_shapes="off", format="compressed")
        notes = [t["storage_note"] for t in result.report["tensors"] if t["storage"] == "dense"]
        assert notes, name
        assert all(reason in n for n in notes if n), notes


def test_streamed_quantized_weights_equal_the_in_memory_route(models_dir, tmp_path, monkeypatch):
    import sparse24_onnx.passes.prune_weights as prune_weights

    source = tmp_path / "in" / "u.onnx"
    source.parent.mkdir()
    onnx.save(
        onnx.load(str(models_dir / "uint8_zero_point.onnx")),
        source,
        save_as_external_data=True,
        location="u.bin",
        size_threshold=0,
    )
    monkeypatch.setattr(prune_weights, "BLOCK_BYTES", 512)  # several blocks per weight
    streamed, memory = tmp_path / "s.onnx", tmp_path / "m.onnx"
    prune_model(source, streamed, tc_shapes="off", external_data=True, validate=False)
    prune_model(source, memory, tc_shapes="off", validate=False)
    a = {t.name: numpy_helper.to_array(t, base_dir=str(tmp_path)) for t in onnx.load(str(streamed)).graph.initializer}
    b = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(memory)).graph.initializer}
    assert all(np.array_equal(a[n], b[n]) and a[n].dtype == b[n].dtype for n in b)


@pytest.fixture(scope="module")
def khmersm_quantized(tmp_path_factory):
    """The trained khmersm transformer quantized by onnxruntime's own quantizer (QDQ, per channel, int8)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model = packaged_file("khmersm", "khmersm/model.onnx")
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.integers(2, 100, (1, 24)), "mask": np.ones((1, 24), bool)} for _ in range(4)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.pending = iter(feeds)

        def get_next(self):
            return next(self.pending, None)

    folder = tmp_path_factory.mktemp("quantized")
    made = {}
    for label, extra in (("int8", {}), ("float_qdq", {"AddQDQPairToWeight": True})):
        path = folder / f"{label}.onnx"
        quantize_static(
            str(model), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=QuantType.QInt8, extra_options=extra,
        )  # fmt: skip
        made[label] = path
    return model, made


@pytest.mark.parametrize("form", ["int8", "float_qdq"])
def test_onnxruntime_quantize_static_output_is_pruned(khmersm_quantized, tmp_path, form):
    _, made = khmersm_quantized
    source, out = made[form], tmp_path / "p.onnx"
    result = prune_model(source, out, shapes={"seq": 24})
    pruned = [t for t in result.report["tensors"] if t["status"] == "pruned"]
    assert len(pruned) == 12  # every projection and FFN weight (the 192x2 head has no tile shape)
    expected = "DequantizeLinear" if form == "int8" else "QuantizeLinear -> DequantizeLinear"
    assert {t["quantization"]["form"] for t in pruned} == {expected}
    before, after = stored(source), stored(out)
    assert all(after[t["name"]].data_type == before[t["name"]].data_type for t in pruned)
    assert check_model(out).passed
    assert check_model(source).exit_code == 1
    assert result.report["validation"]["witnessed"]


def test_prune_then_quantize_keeps_the_zeros(khmersm_quantized, tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    model, _ = khmersm_quantized
    pruned = tmp_path / "pruned.onnx"
    prune_model(model, pruned, validate=False)
    rng = np.random.default_rng(0)
    feeds = iter([{"x": rng.integers(2, 100, (1, 24)), "mask": np.ones((1, 24), bool)} for _ in range(4)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(feeds, None)

    quantized = tmp_path / "pruned_int8.onnx"
    quantize_static(
        str(pruned), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
    )  # fmt: skip
    checked = check_model(quantized)
    assert checked.passed
    assert checked.report["summary"]["sparse"] == 12
    assert {t["quantization"]["form"] for t in checked.report["tensors"] if t["status"] == "2:4"} == {
        "DequantizeLinear"
    }
