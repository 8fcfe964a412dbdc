"""The Python API: prune_model, check_model, expand_model, their results and exceptions."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest

import sparse24_onnx
from sparse24_onnx import BadInput, ValidationFailed, check_model, expand_model, prune_model
from sparse24_onnx.core import is_24

from .helpers import all_tensors, digest


def test_prune_model_returns_the_report_and_writes_out(models_dir, tmp_path, capsys, caplog):
    source, out = models_dir / "mlp.onnx", tmp_path / "out.onnx"
    before = digest(source)
    with caplog.at_level(logging.INFO, logger="sparse24_onnx"):
        result = prune_model(source, out, shapes={"batch": 3})
    assert digest(source) == before
    assert capsys.readouterr() == ("", "")  # the library prints nothing
    assert any("pruning" in r.getMessage() for r in caplog.records)  # progress goes to logging
    assert result.exit_code == 0
    assert result.output == out
    report = result.report
    assert report["command"] == "optimize"
    assert report["summary"]["pruned"] == 3
    assert report["validation"]["passed"] is None
    assert report["validation"]["worst_rel_l2_error"] > 0
    assert report["validation"]["inputs"][0]["shapes"] == [[3, 64]]
    json.dumps(report)  # JSON-ready as it is (no NaN here)
    pruned = all_tensors(out)
    assert all(is_24(pruned[f"fc{i}.weight"], 0) for i in range(3))
    assert "pruned 3 of 3 weights" in result.verdict
    assert "kept|w|" in result.table()


def test_cli_report_is_the_api_report(models_dir, tmp_path):
    from sparse24_onnx.optimize import main

    source = models_dir / "mlp.onnx"
    assert main([str(source), str(tmp_path / "a.onnx"), "-q", "--report", str(tmp_path / "r.json")]) == 0
    written = json.loads((tmp_path / "r.json").read_text())
    result = prune_model(source, tmp_path / "a.onnx")
    for key in ("command", "method", "format", "summary", "tensors"):
        expected = result.report[key]
        if key == "summary":
            expected = {**expected, "output_bytes": written[key]["output_bytes"]}
        assert written[key] == json.loads(json.dumps(expected)), key
    assert written["validation"]["outputs"] == result.report["validation"]["outputs"]


def test_feeds_as_arrays_and_a_model_proto(models_dir, tmp_path):
    proto = onnx.load(str(models_dir / "transformer.onnx"))
    rng = np.random.default_rng(0)
    feeds = [{"input_ids": rng.integers(0, 100, (2, 8)).astype(np.int64)} for _ in range(3)]
    result = prune_model(
        proto, tmp_path / "t.onnx", method="sparsegpt", calibration=feeds[:2], inputs=feeds[2:], max_rel_error=5.0
    )
    assert result.report["input"] == "<onnx.ModelProto>"
    validation = result.report["validation"]
    assert validation["source"] == "arrays"
    assert validation["feeds"] == 1
    assert validation["passed"] is True
    calibrated = [t for t in result.report["tensors"] if t["calibration"]]
    assert calibrated
    assert all(t["calibration"]["samples"] == 2 * 2 * 8 for t in calibrated)


def test_bad_input_is_an_exception_not_an_exit(tmp_path):
    with pytest.raises(BadInput, match="no such file"):
        prune_model(tmp_path / "missing.onnx", tmp_path / "out.onnx")
    with pytest.raises(BadInput, match="unknown option"):
        prune_model(tmp_path / "missing.onnx", tmp_path / "out.onnx", max_rel_err=0.1)
    with pytest.raises(BadInput, match=r"method=.gradient. needs gradients="):
        prune_model(tmp_path / "missing.onnx", tmp_path / "out.onnx", method="gradient")
    with pytest.raises(BadInput, match=r"expected a path or an onnx\.ModelProto"):
        check_model(42)


def test_failed_gate_raises_validation_failed_with_the_report(models_dir, tmp_path):
    out = tmp_path / "out.onnx"
    with pytest.raises(ValidationFailed) as failed:
        prune_model(models_dir / "mlp.onnx", out, max_rel_error=1e-6)
    assert failed.value.exit_code == 1
    report = failed.value.result.report
    assert report["validation"]["passed"] is False
    assert report["output"] is None
    assert report["exit_code"] == 1
    assert not out.exists()
    assert "exceeds max_rel_error=1e-06" in str(failed.value)


def test_check_and_expand(models_dir, tmp_path):
    original = check_model(models_dir / "mlp.onnx")
    assert not original.passed
    assert original.exit_code == 1
    assert original.verdict.startswith("FAIL")
    compressed = tmp_path / "c.onnx"
    prune_model(models_dir / "mlp.onnx", compressed, format="compressed", validate=False)
    checked = check_model(compressed)
    assert checked.passed
    assert checked.report["summary"]["sparse"] == 3
    expanded = expand_model(compressed, tmp_path / "e.onnx")
    assert sorted(expanded.expanded) == ["fc0.weight", "fc1.weight", "fc2.weight"]
    assert check_model(expanded.output, strict=True).passed


def test_public_names():
    assert set(sparse24_onnx.__all__) >= {"prune_model", "check_model", "expand_model", "BadInput", "ValidationFailed"}
    assert issubclass(ValidationFailed, sparse24_onnx.Sparse24Error)
    with pytest.raises(AttributeError):
        sparse24_onnx.no_such_name  # noqa: B018
