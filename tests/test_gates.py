"""Task-shaped validation: top-1 agreement against NumPy, and gates per output and per metric."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparse24_onnx import BadInput, ValidationFailed, prune_model
from sparse24_onnx.validation.compare import compare_runs
from sparse24_onnx.validation.gates import Gate, parse_bounds, violation

F = TensorProto.FLOAT


def test_top1_agreement_matches_numpy():
    rng = np.random.default_rng(0)
    y = [rng.standard_normal((4, 7, 10)).astype(np.float32) for _ in range(3)]
    z = [a + 0.7 * rng.standard_normal(a.shape).astype(np.float32) for a in y]
    (c,) = compare_runs(["logits"], [[a] for a in y], [[b] for b in z])
    expected = np.mean(np.concatenate([(a.argmax(-1) == b.argmax(-1)).ravel() for a, b in zip(y, z, strict=True)]))
    assert c.top1_agreement == pytest.approx(expected)
    assert 0.2 < c.top1_agreement < 1.0
    (scalar,) = compare_runs(["score"], [[np.ones((4, 1), np.float32)]], [[np.ones((4, 1), np.float32)]])
    assert scalar.top1_agreement is None
    assert "no last axis" in scalar.top1_note


def test_bounds_parse_as_the_cli_and_python_write_them():
    assert parse_bounds("--max-rel-error", ["0.05", "logits=0.1"]) == [
        Gate("max_rel_error", 0.05), Gate("max_rel_error", 0.1, "logits"),
    ]  # fmt: skip
    assert parse_bounds("min_cosine=", {"emb": 0.99}) == [Gate("min_cosine", 0.99, "emb")]
    assert parse_bounds("min_top1_agreement=", 0.9) == [Gate("min_top1_agreement", 0.9)]
    for bad in ("x", "logits=", "-1"):
        with pytest.raises(BadInput):
            parse_bounds("--max-rel-error", [bad])
    with pytest.raises(BadInput, match="from -1 to 1"):
        parse_bounds("--min-cosine", ["1.5"])


def test_violation_is_at_most_one_exactly_when_every_gate_holds():
    (c,) = compare_runs(["y"], [[np.array([[1.0, 2.0, 3.0]])]], [[np.array([[1.0, 2.5, 2.9]])]])
    holding = [Gate("max_rel_error", 1.0), Gate("min_cosine", 0.9), Gate("min_top1_agreement", 1.0)]
    assert all(g.holds(g.value([c])) for g in holding)
    assert violation(holding, [c]) <= 1.0
    failing = [*holding, Gate("max_rel_error", 0.01)]
    assert violation(failing, [c]) > 1.0


def _two_outputs(path):
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="/fc1/MatMul"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["logits"], name="/fc2/MatMul"),
        helper.make_node("MatMul", ["x", "w3"], ["embedding"], name="/emb/MatMul"),
    ]
    inits = [
        numpy_helper.from_array((rng.standard_normal(s) / 8).astype(np.float32), n)
        for n, s in (("w1", (64, 64)), ("w2", (64, 16)), ("w3", (64, 32)))
    ]
    outputs = [
        helper.make_tensor_value_info("logits", F, [8, 16]),
        helper.make_tensor_value_info("embedding", F, [8, 32]),
    ]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", F, [8, 64])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_gates_per_output_and_metric(tmp_path):
    model = _two_outputs(tmp_path / "m.onnx")
    loose = prune_model(model, tmp_path / "a.onnx", max_rel_error={"logits": 5.0}, min_cosine=-1.0, num_feeds=4)
    gates = loose.report["validation"]["gates"]
    assert [(g["option"], g["output"], g["passed"]) for g in gates] == [
        ("max_rel_error", "logits", True), ("min_cosine", None, True),
    ]  # fmt: skip
    outputs = {o["name"]: o for o in loose.report["validation"]["outputs"]}
    assert gates[0]["value"] == outputs["logits"]["rel_l2_error"]
    assert gates[1]["value"] == min(o["cosine_similarity"] for o in outputs.values())
    assert loose.report["validation"]["max_rel_error"] is None  # no bound on every output
    with pytest.raises(ValidationFailed, match=r"top-1 agreement of output 'logits' [0-9.]+ is below"):
        prune_model(model, tmp_path / "b.onnx", min_top1_agreement={"logits": 1.0}, num_feeds=4)
    assert not (tmp_path / "b.onnx").exists()
    with pytest.raises(BadInput, match="the model has no output 'nope'"):
        prune_model(model, tmp_path / "c.onnx", max_rel_error={"nope": 1.0})


def test_auto_exclude_meets_a_top1_gate(tmp_path):
    model = _two_outputs(tmp_path / "m.onnx")
    result = prune_model(
        model,
        tmp_path / "a.onnx",
        min_top1_agreement={"logits": 0.8},
        min_cosine={"embedding": 0.9},
        auto_exclude=True,
        num_feeds=4,
    )
    validation = result.report["validation"]
    assert validation["passed"] is True
    assert all(g["passed"] for g in validation["gates"])
    assert result.report["summary"]["pruned"] >= 1
    budget = result.report["auto_exclude"]
    assert budget["gates"]
    assert budget["error"] <= 1.0  # scored as the gates' violation: at most 1 when they hold
