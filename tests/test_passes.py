"""The pass pipeline on real ONNX files: which weights, which axis, which reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sparse24_onnx.core import decompress, is_24, prune_24_magnitude
from sparse24_onnx.methods import GradientMethod, MagnitudeMethod
from sparse24_onnx.modelio.load import load_model
from sparse24_onnx.passes import PROVENANCE_KEY, FindWeights, Pipeline, PruneWeights, RecordProvenance
from sparse24_onnx.passes.weights import Status, weight_records


def find(path, exclude=()):
    model = load_model(path)
    result = FindWeights(exclude)(model)
    assert not result.modified
    return model, {r.name: r for r in result.weights}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mlp.onnx", {"fc0.weight": 0, "fc1.weight": 0, "fc2.weight": 0}),
        ("gemm.onnx", {"g0.weight": 1, "g1.weight": 0}),
        ("gemm_trans_a.onnx", {"wa": 0, "w30": 0}),
        ("matmul_a_const.onnx", {"w": 1}),
        (
            "transformer.onnx",
            {f"attn.{p}.weight": 0 for p in "qkvo"} | {"ffn.up.weight": 0, "ffn.down.weight": 0},
        ),
    ],
)
def test_weights_and_axes(models_dir, name, expected):
    _, records = find(models_dir / name)
    assert {n: r.axis for n, r in records.items()} == expected
    # Biases, LayerNorm parameters, shape constants and the embedding table are not weights.
    assert not any("bias" in n or "ln" in n or "embed" in n for n in records)


def test_skip_reasons(models_dir):
    _, records = find(models_dir / "skips.onnx")
    reasons = {n: r.reason for n, r in records.items() if r.status == Status.SKIPPED}
    assert "different axes" in reasons["shared.weight"]
    assert "Add '/tied/Add'" in reasons["tied.weight"]
    assert "INT32 is not a float or quantized weight type" in reasons["int.weight"]
    assert "graph input" in reasons["shadow.weight"]
    assert "vector" in reasons["vector.weight"]
    assert records["ok.weight"].status == Status.CANDIDATE  # Shape reads only the shape


def test_length_not_multiple_of_4_and_exclude(models_dir):
    _, records = find(models_dir / "gemm_trans_a.onnx")
    assert records["w30"].status == Status.SKIPPED
    assert "length 30, not a multiple of 4" in records["w30"].reason
    _, records = find(models_dir / "mlp.onnx", exclude=[r"fc1\.", "^/fc2/"])
    assert records["fc0.weight"].status == Status.CANDIDATE
    assert records["fc1.weight"].reason == r"excluded by --exclude 'fc1\.'"
    assert records["fc2.weight"].reason == "excluded by --exclude '^/fc2/'"  # matched by node name


def test_pipeline_prunes_along_the_axis_and_records_provenance(models_dir):
    model = load_model(models_dir / "gemm.onnx")
    originals = {v.name: v.const_value.numpy().copy() for v in model.graph.initializers.values()}
    result = Pipeline(FindWeights(), PruneWeights(MagnitudeMethod()), RecordProvenance("magnitude"))(model)
    assert result.modified
    assert [name for name, _ in result.steps] == ["FindWeights", "PruneWeights", "RecordProvenance"]
    pruned = {r.name: r for r in weight_records(model)}
    for name, axis in (("g0.weight", 1), ("g1.weight", 0)):
        weights = model.graph.initializers[name].const_value.numpy()
        assert pruned[name].status == Status.PRUNED
        assert is_24(weights, axis)
        assert not is_24(weights, 1 - axis)
        np.testing.assert_array_equal(weights, decompress(prune_24_magnitude(originals[name], axis)))
        assert pruned[name].metrics.pruned_count == weights.size // 2
    for bias in ("g0.bias", "g1.bias"):
        np.testing.assert_array_equal(model.graph.initializers[bias].const_value.numpy(), originals[bias])
    provenance = json.loads(model.metadata_props[PROVENANCE_KEY])
    assert provenance["method"] == "magnitude"
    assert provenance["tensors"] == {"g0.weight": {"axis": 1}, "g1.weight": {"axis": 0}}


def test_gradient_method_uses_gradients_and_skips_missing(models_dir):
    model = load_model(models_dir / "mlp.onnx")
    w0 = model.graph.initializers["fc0.weight"].const_value.numpy().copy()
    gradients = {"fc0.weight": np.random.default_rng(7).standard_normal(w0.shape).astype(np.float32)}
    Pipeline(FindWeights(), PruneWeights(GradientMethod(gradients)))(model)
    records = {r.name: r for r in weight_records(model)}
    assert records["fc0.weight"].status == Status.PRUNED
    assert records["fc1.weight"].reason == "no gradient for this tensor in --gradients"
    pruned = model.graph.initializers["fc0.weight"].const_value.numpy()
    by_magnitude = decompress(prune_24_magnitude(w0, 0))
    assert is_24(pruned, 0)
    assert not np.array_equal(pruned, by_magnitude)  # the gradient changed the choice


def test_nan_weights_are_skipped(models_dir):
    import onnx_ir as ir

    model = load_model(models_dir / "mlp.onnx")
    value = model.graph.initializers["fc1.weight"]
    poisoned = value.const_value.numpy().copy()
    poisoned[3, 5] = np.nan
    value.const_value = ir.Tensor(poisoned, name="fc1.weight")
    Pipeline(FindWeights(), PruneWeights(MagnitudeMethod()))(model)
    records = {r.name: r for r in weight_records(model)}
    assert records["fc1.weight"].reason == "contains NaN or Inf"
    assert records["fc0.weight"].status == Status.PRUNED


def test_passes_that_need_the_weight_records_refuse_to_run_without_them(models_dir):
    from onnx_ir.passes import PreconditionError

    from sparse24_onnx.passes import CompressWeights, PermuteChannels

    for step in (PruneWeights(MagnitudeMethod()), CompressWeights(), PermuteChannels(), RecordProvenance("m")):
        model = load_model(models_dir / "mlp.onnx")
        with pytest.raises(PreconditionError, match="needs FindWeights"):
            step(model)
