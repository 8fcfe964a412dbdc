"""Validation that knows what it witnessed, says what it fed, and refuses bad input early and in one line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparse24_onnx import BadInput, ValidationFailed, check_model, prune_model

F = TensorProto.FLOAT


def _save(path: Path, nodes, inputs, outputs, inits, opset: int = 17) -> Path:
    model = helper.make_model(
        helper.make_graph(nodes, path.stem, inputs, outputs, inits), opset_imports=[helper.make_opsetid("", opset)]
    )
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _weight(seed: int, shape=(64, 32)) -> onnx.TensorProto:
    w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) / 8
    return numpy_helper.from_array(w, "w")


def masked_model(path: Path) -> Path:
    """``y = (x * [lengths > 5]) @ w``: generated lengths in [0, 2) mask every input, so nothing reaches w."""
    nodes = [
        helper.make_node("Constant", [], ["five"], value=numpy_helper.from_array(np.array(5, np.int64))),
        helper.make_node("Greater", ["lengths", "five"], ["on"]),
        helper.make_node("Cast", ["on"], ["gate"], to=F),
        helper.make_node("Unsqueeze", ["gate", "one"], ["gate2"]),
        helper.make_node("Mul", ["x", "gate2"], ["xm"]),
        helper.make_node("MatMul", ["xm", "w"], ["y"], name="/fc/MatMul"),
    ]
    inputs = [
        helper.make_tensor_value_info("x", F, ["batch", 64]),
        helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
    ]
    inits = [_weight(0), numpy_helper.from_array(np.array([1], np.int64), "one")]
    return _save(path, nodes, inputs, [helper.make_tensor_value_info("y", F, ["batch", 32])], inits)


def empty_output_model(path: Path) -> Path:
    """``y = (x @ w)[:, 0:0]``: an output that is always empty."""
    consts = {"s": [0], "e": [0], "a": [1]}
    inits = [_weight(1)] + [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="/fc/MatMul"),
        helper.make_node("Slice", ["h", "s", "e", "a"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", F, ["batch", 64])]
    return _save(path, nodes, inputs, [helper.make_tensor_value_info("y", F, ["batch", None])], inits)


def test_bit_identical_outputs_are_witnessed_as_nothing(tmp_path):
    model = masked_model(tmp_path / "masked.onnx")
    result = prune_model(model, tmp_path / "out.onnx")  # no bound: reported, OUT written
    validation = result.report["validation"]
    assert validation["witnessed"] is False
    assert any("bit-identical" in w for w in validation["warnings"])
    assert "WITNESSED NOTHING" in result.verdict
    with pytest.raises(ValidationFailed, match="pass real inputs with --inputs") as failed:
        prune_model(model, tmp_path / "gated.onnx", max_rel_error=0.5)
    assert failed.value.result.report["validation"]["passed"] is False
    assert not (tmp_path / "gated.onnx").exists()
    # Real inputs that reach the layer make it a real validation.
    (tmp_path / "real").mkdir()
    np.savez(tmp_path / "real" / "a.npz", x=np.ones((2, 64), np.float32), lengths=np.array([9, 9]))
    real = prune_model(model, tmp_path / "real.onnx", inputs=str(tmp_path / "real"), max_rel_error=5)
    assert real.report["validation"]["witnessed"] is True


def test_empty_outputs_fail_a_gate(tmp_path):
    model = empty_output_model(tmp_path / "empty.onnx")
    with pytest.raises(ValidationFailed, match="no non-empty numeric output"):
        prune_model(model, tmp_path / "out.onnx", max_rel_error=0.5)
    result = prune_model(model, tmp_path / "out.onnx")
    assert result.report["validation"]["witnessed"] is False


def test_empty_input_arrays_are_bad_input(models_dir, tmp_path):
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 64), np.float32))
    with pytest.raises(BadInput, match="is empty"):
        prune_model(models_dir / "mlp.onnx", tmp_path / "o.onnx", inputs=str(tmp_path / "empty.npz"))
    with pytest.raises(BadInput, match="would be empty"):
        prune_model(models_dir / "mlp.onnx", tmp_path / "o.onnx", shapes={"batch": 0})


def test_what_was_fed_is_in_the_report(models_dir, tmp_path):
    result = prune_model(models_dir / "transformer.onnx", tmp_path / "t.onnx", shapes={"seq": 8}, seed=3)
    validation = result.report["validation"]
    assert validation["source"] == "generated (seed 3)"
    (entry,) = validation["inputs"]
    assert (entry["name"], entry["dtype"]) == ("input_ids", "int64")
    assert entry["shapes"] == [[1, 8]]
    assert entry["values"] == "integers in [0, 100)"  # token ids: the embedding table's rows
    assert entry["assumed"] == {"batch": "1: not set by --shape"}
    assert any("not set and defaulted to 1: batch;" in w for w in validation["warnings"])
    assert validation["provider"] == "CPUExecutionProvider"


def test_inputs_sharing_a_named_dimension_must_agree(tmp_path):
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["y"])]
    inputs = [helper.make_tensor_value_info(n, F, ["batch", "seq", 64]) for n in "ab"]
    model = _save(tmp_path / "two.onnx", nodes, inputs, [helper.make_tensor_value_info("y", F, None)], [_weight(2)])
    np.savez(tmp_path / "bad.npz", a=np.ones((1, 16, 64), np.float32), b=np.ones((1, 8, 64), np.float32))
    with pytest.raises(BadInput, match="dimension 'seq' is 16 in 'a' but 8 in 'b'"):
        prune_model(model, tmp_path / "o.onnx", inputs=str(tmp_path / "bad.npz"))


def unsorted_fp16_model(models_dir: Path, path: Path) -> Path:
    """The fp16 MLP with its nodes out of order, as fp16 converters leave them (Cast nodes appended)."""
    model = onnx.load(str(models_dir / "mlp_fp16.onnx"))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes[1:] + nodes[:1])
    onnx.save(model, path)
    return path


def test_a_graph_out_of_topological_order_is_sorted_and_processed(models_dir, tmp_path):
    model = unsorted_fp16_model(models_dir, tmp_path / "unsorted.onnx")
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(str(model))
    out = tmp_path / "out.onnx"
    result = prune_model(model, out, shapes={"batch": 2})
    assert result.report["summary"]["pruned"] == 3
    assert any("topological" in w for w in result.report["warnings"])
    # One warning for one fact: the sorting note, not also the checker's complaint about the order.
    assert not any("ONNX checker rejects the input" in w for w in result.report["warnings"])
    onnx.checker.check_model(str(out))  # OUT is sorted: the checker accepts it
    assert check_model(model).exit_code == 1  # check reads it too (and finds it dense)


def test_a_model_neither_checker_nor_onnxruntime_accepts_names_both(models_dir, tmp_path):
    model = onnx.load(str(models_dir / "mlp.onnx"))
    model.graph.node[0].op_type = "NoSuchOp"
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(BadInput, match=r"the ONNX checker rejects the model .* and onnxruntime cannot load it"):
        prune_model(tmp_path / "bad.onnx", tmp_path / "o.onnx")


def cli(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sparse24_onnx", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, timeout=300, env=env,
    )  # fmt: skip


def test_onnxruntime_failures_are_one_clean_line_naming_the_option(tmp_path):
    # A Reshape to a fixed size: any batch but 1 makes onnxruntime fail while running.
    shape = numpy_helper.from_array(np.array([1, 64], np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", F, ["batch", 64])]
    _save(tmp_path / "m.onnx", nodes, inputs, [helper.make_tensor_value_info("y", F, None)], [_weight(3), shape])
    result = cli("optimize", "m.onnx", "o.onnx", "--shape", "batch=3", "-q", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    line = result.stderr
    assert "\x1b[" not in line
    assert "[E:onnxruntime" not in line
    assert line.startswith("sparse24: error: onnxruntime cannot run the model")
    assert "{3,64}" in line
    assert "--shape" in line
    (tmp_path / "cal").mkdir()
    np.savez(tmp_path / "cal" / "a.npz", x=np.ones((3, 64), np.float32))
    calibrated = cli(
        "optimize", "m.onnx", "o.onnx", "-q", "--method", "wanda", "--calibration", "cal", "--no-validate",
        cwd=tmp_path,
    )  # fmt: skip
    assert calibrated.returncode == 2
    assert "--calibration" in calibrated.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seed", "-1"], "--seed -1"),
        (["--num-feeds", "100000000000"], "GiB"),
        (["--shape", "batch=99999999999"], "GiB"),
        (["--inputs", "missing.npz"], "--inputs missing.npz: no such file or folder"),
        (["--method", "gradient", "--gradients", "missing.npz"], "--gradients missing.npz: no such file"),
        (["--inputs", "feed.npz", "--shape", "batch=2"], "--inputs with --shape"),
        (["--inputs", "feed.npz", "--seed", "3"], "--inputs with --seed"),
        (["--no-validate", "--inputs", "feed.npz"], "--no-validate with --inputs"),
        (["--no-validate", "--num-feeds", "2"], "--no-validate with --num-feeds"),
    ],
)
def test_bad_options_are_refused_before_any_work(models_dir, tmp_path, args, message):
    (tmp_path / "model.onnx").write_bytes((models_dir / "mlp.onnx").read_bytes())
    np.savez(tmp_path / "feed.npz", x=np.ones((1, 64), np.float32))
    result = cli("optimize", "model.onnx", "out.onnx", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("sparse24: error: ")
    assert result.stderr.count("\n") == 1, result.stderr  # no progress line before a pre-flight error
    assert message in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_report_to_a_read_only_place_is_refused_before_out_is_written(models_dir, tmp_path, monkeypatch, capsys):
    from sparse24_onnx import report
    from sparse24_onnx.optimize import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    result = cli("optimize", models_dir / "mlp.onnx", "out.onnx", "--report", "file/r.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "--report" in result.stderr
    assert not (tmp_path / "out.onnx").exists()
    # A folder the user may not write in (simulated: root may write anywhere).
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(report.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    out = tmp_path / "out2.onnx"
    assert main([str(models_dir / "mlp.onnx"), str(out), "--report", str(locked / "r.json")]) == 2
    assert "folder" in capsys.readouterr().err
    assert not out.exists()


def test_out_that_is_an_input_side_file_is_refused_before_onnxruntime_runs(models_dir, tmp_path):
    model = onnx.load(str(models_dir / "mlp.onnx"))
    onnx.save(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.bin", size_threshold=0)
    result = cli("optimize", "m.onnx", "m.bin", cwd=tmp_path)
    assert result.returncode == 2
    assert "external data" in result.stderr
    assert "running the original model" not in result.stderr


def test_gradients_that_match_no_weight_are_a_warning(models_dir, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "g.npz",
        **{f"fc{i}.weight": rng.standard_normal(s).astype(np.float32) for i, s in enumerate([(64, 128), (128, 64)])},
        typo_weight=np.zeros(3, np.float32),
    )
    result = prune_model(models_dir / "mlp.onnx", tmp_path / "o.onnx", method="gradient", gradients=tmp_path / "g.npz")
    assert any("1 key(s) match no weight" in w and "typo_weight" in w for w in result.report["warnings"])


def test_report_file_mode_follows_the_umask_and_dash_is_stdout(models_dir, tmp_path):
    env = {**os.environ}
    script = (
        "import os, sys; os.umask(0o022); from sparse24_onnx.cli import main; "
        f"sys.exit(main(['optimize', {str(models_dir / 'mlp.onnx')!r}, 'o.onnx', '-q', '--report', 'r.json']))"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE((tmp_path / "r.json").stat().st_mode) == 0o644
    dash = cli("optimize", models_dir / "mlp.onnx", "o2.onnx", "--report", "-", cwd=tmp_path)
    assert dash.returncode == 0
    assert json.loads(dash.stdout)["command"] == "optimize"  # stdout is the report alone
    assert "pruned 3 of 3 weights" in dash.stderr  # the table and verdict moved to stderr
    assert not (tmp_path / "-").exists()


def test_an_output_that_no_longer_resembles_the_original_gets_a_hint(tmp_path):
    # y = x @ w + x @ (-w + small): the branches cancel, pruning them differently does not.
    rng = np.random.default_rng(4)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    v = (-w + 0.01 * rng.standard_normal(w.shape)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"]),
        helper.make_node("MatMul", ["x", "v"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v")]
    inputs = [helper.make_tensor_value_info("x", F, ["batch", 64])]
    model = _save(tmp_path / "c.onnx", nodes, inputs, [helper.make_tensor_value_info("y", F, None)], inits)
    result = prune_model(model, tmp_path / "o.onnx", shapes={"batch": 4})
    assert result.report["validation"]["worst_rel_l2_error"] > 1
    assert any("no longer resembles" in w for w in result.report["validation"]["warnings"])


def test_long_skip_reasons_are_shortened_in_the_table_not_in_the_report(models_dir, tmp_path):
    result = prune_model(models_dir / "skips.onnx", tmp_path / "o.onnx", validate=False)
    longest = max((t["reason"] for t in result.report["tensors"]), key=len)
    assert len(longest) > 80
    assert max(len(line) for line in result.table().splitlines()) < 200
    assert longest not in result.table()
