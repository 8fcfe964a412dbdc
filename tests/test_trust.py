"""Promises a typo or an odd model must not break: the input is never replaced, gates do not lie, and
what cannot be used is refused in one line (or said), never silently ignored."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparse24_onnx import BadInput, ValidationFailed, check_model, prune_model
from tests.helpers import digest, error_lines, run_module

F = TensorProto.FLOAT


def _save(path: Path, nodes, inputs, outputs, inits, *, ir_version: int = 8, opset: int = 17) -> Path:
    model = helper.make_model(
        helper.make_graph(nodes, path.stem, inputs, outputs, inits), opset_imports=[helper.make_opsetid("", opset)]
    )
    model.ir_version = ir_version
    onnx.save(model, path)
    return path


def _w(name: str, shape=(64, 32), seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array((rng.standard_normal(shape) / 8).astype(np.float32), name)


def mlp(path: Path) -> Path:
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="/fc1/MatMul"),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="/fc2/MatMul"),
    ]
    inputs = [helper.make_tensor_value_info("x", F, ["batch", 64])]
    outputs = [helper.make_tensor_value_info("y", F, ["batch", 32])]
    return _save(path, nodes, inputs, outputs, [_w("w1", (64, 64), 1), _w("w2", (64, 32), 2)])


# ---------------------------------------------------------------- the report never destroys a model


@pytest.mark.parametrize("target", ["IN", "OUT", "OUT.data"])
def test_report_path_colliding_with_a_model_file_is_refused(tmp_path, target):
    model = mlp(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    before = digest(model)
    report = {"IN": model, "OUT": out, "OUT.data": tmp_path / "out.onnx.data"}[target]
    result = run_module("optimize", model, out, "--external-data", "--report", report)
    assert result.returncode == 2, result.stderr
    assert "a model file of this run" in result.stderr
    assert len(error_lines(result)) == 1
    assert digest(model) == before
    assert not out.exists()


def test_report_over_the_inputs_external_data_is_refused(tmp_path):
    model = mlp(tmp_path / "in.onnx")
    loaded = onnx.load(model)
    onnx.save(loaded, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    data = tmp_path / "ext.onnx.data"
    before = digest(data)
    result = run_module("optimize", tmp_path / "ext.onnx", tmp_path / "out.onnx", "--report", data)
    assert result.returncode == 2
    assert "a model file of this run" in result.stderr
    assert digest(data) == before
    with pytest.raises(BadInput, match="a model file of this run"):
        check_model(tmp_path / "ext.onnx", report=data)
    assert digest(data) == before


def test_check_report_over_the_model_is_refused(tmp_path):
    model = mlp(tmp_path / "in.onnx")
    before = digest(model)
    result = run_module("check", model, "--report", model)
    assert result.returncode == 2
    assert digest(model) == before


def test_report_that_cannot_be_written_stops_the_run_before_out_is_written(tmp_path):
    # /sys looks writable to root but refuses new files: the report cannot be staged, so OUT is not written.
    if not Path("/sys").is_dir() or not os.access("/sys", os.W_OK):
        pytest.skip("needs a /sys that looks writable")
    model = mlp(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    result = run_module("optimize", model, out, "--report", "/sys/sparse24-report.json")
    assert result.returncode == 2, result.stderr
    assert "cannot write the report" in result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")]  # no staging left


# ---------------------------------------------------------------- gates that do not lie


def test_auto_exclude_that_must_leave_everything_dense_fails(tmp_path):
    model = mlp(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    with pytest.raises(ValidationFailed, match="no weight can be pruned within") as failed:
        prune_model(model, out, max_rel_error=1e-9, auto_exclude=True)
    assert not out.exists()
    report = failed.value.result.report
    assert report["validation"]["passed"] is False
    assert report["auto_exclude"]["dense"]
    assert len(report["auto_exclude"]["dense"]) == 2
    assert "FAILED" in failed.value.result.verdict
    result = run_module("optimize", model, out, "--max-rel-error", "1e-9", "--auto-exclude")
    assert result.returncode == 1
    assert "--auto-exclude: no weight can be pruned within --max-rel-error 1e-09" in result.stderr


def test_check_fails_a_model_whose_weights_were_all_left_dense(tmp_path):
    model = mlp(tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    prune_model(model, out, exclude=["w"], validate=False)
    result = check_model(out)
    assert not result.passed
    assert "no weight is 2:4" in result.verdict
    assert result.report["summary"]["left_dense_on_purpose"] == 2


def test_empty_outputs_are_left_out_and_the_rest_is_gated(tmp_path):
    consts = [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in {"s": [0], "e": [0], "a": [1]}.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="/fc/MatMul"),
        helper.make_node("Slice", ["y", "s", "e", "a"], ["state"]),
    ]
    inputs = [helper.make_tensor_value_info("x", F, ["batch", 64])]
    outputs = [helper.make_tensor_value_info("y", F, ["batch", 32]), helper.make_tensor_value_info("state", F, None)]
    model = _save(tmp_path / "m.onnx", nodes, inputs, outputs, [_w("w"), *consts])
    result = prune_model(model, tmp_path / "out.onnx", max_rel_error=5.0)
    validation = result.report["validation"]
    assert validation["passed"] is True
    assert validation["witnessed"] is True
    assert validation["not_compared"] == ["state"]
    assert [o["name"] for o in validation["outputs"]] == ["y"]
    assert any("not compared" in w for w in validation["warnings"])


# ---------------------------------------------------------------- models the peer prunes


def test_ir3_initializers_listed_as_inputs_are_pruned(tmp_path):
    source = Path(onnx.__file__).parent / "backend/test/data/pytorch-converted/test_Conv1d/model.onnx"
    if not source.exists():
        pytest.skip("onnx ships no backend test data here")
    out = tmp_path / "out.onnx"
    result = prune_model(source, out, tc_shapes="off")
    assert result.report["summary"]["pruned"] == 1
    assert check_model(out, tc_shapes="off").passed


def test_nothing_to_prune_means_nothing_to_validate(tmp_path):
    # Generated feeds this model refuses (it needs x's values to be valid indices), and no weight to prune.
    nodes = [helper.make_node("Gather", ["table", "x"], ["y"])]
    table = numpy_helper.from_array(np.zeros((3, 4), np.float32), "table")
    inputs = [helper.make_tensor_value_info("x", TensorProto.INT64, [2])]
    model = _save(tmp_path / "m.onnx", nodes, inputs, [helper.make_tensor_value_info("y", F, [2, 4])], [table])
    result = run_module("optimize", model, tmp_path / "out.onnx", "--int-range", "100:200")
    assert result.returncode == 0, result.stderr
    assert "nothing to validate" in result.stderr
    assert (tmp_path / "out.onnx").exists()


def test_inputs_declared_empty_can_be_generated_and_fed(tmp_path):
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="/fc/MatMul"),
        helper.make_node("Identity", ["state"], ["state_out"]),
    ]
    inputs = [helper.make_tensor_value_info("x", F, [2, 64]), helper.make_tensor_value_info("state", F, [0, 4])]
    outputs = [helper.make_tensor_value_info("y", F, [2, 32]), helper.make_tensor_value_info("state_out", F, [0, 4])]
    model = _save(tmp_path / "m.onnx", nodes, inputs, outputs, [_w("w")])
    assert prune_model(model, tmp_path / "a.onnx").report["validation"]["witnessed"] is True
    np.savez(tmp_path / "feed.npz", x=np.ones((2, 64), np.float32), state=np.zeros((0, 4), np.float32))
    result = prune_model(model, tmp_path / "b.onnx", inputs=str(tmp_path / "feed.npz"), max_rel_error=5)
    assert result.report["validation"]["passed"] is True


def test_minus_inf_attention_mask_is_fine_when_outputs_are_finite(tmp_path):
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="/fc/MatMul"),
        helper.make_node("Add", ["h", "bias_mask"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["y"], axis=-1),
    ]
    inputs = [helper.make_tensor_value_info("x", F, [2, 64]), helper.make_tensor_value_info("bias_mask", F, [2, 32])]
    model = _save(tmp_path / "m.onnx", nodes, inputs, [helper.make_tensor_value_info("y", F, [2, 32])], [_w("w")])
    mask = np.zeros((2, 32), np.float32)
    mask[:, 16:] = -np.inf
    np.savez(tmp_path / "ok.npz", x=np.ones((2, 64), np.float32), bias_mask=mask)
    assert prune_model(model, tmp_path / "a.onnx", inputs=str(tmp_path / "ok.npz")).report["validation"]["witnessed"]
    mask[:] = -np.inf  # every position masked: the softmax is NaN, so nothing can be compared
    np.savez(tmp_path / "bad.npz", x=np.ones((2, 64), np.float32), bias_mask=mask)
    with pytest.raises(BadInput, match="not finite either"):
        prune_model(model, tmp_path / "b.onnx", inputs=str(tmp_path / "bad.npz"))


def test_bfloat16_arrays_in_npz_are_refused_in_one_line(tmp_path):
    import ml_dtypes

    model = mlp(tmp_path / "m.onnx")
    np.savez(tmp_path / "bf16.npz", x=np.ones((2, 64), ml_dtypes.bfloat16))
    result = run_module("optimize", model, tmp_path / "o.onnx", "--inputs", tmp_path / "bf16.npz")
    assert result.returncode == 2
    assert "save it as float32" in result.stderr
    assert "tensor(string)" not in result.stderr


# ---------------------------------------------------------------- options that were silently ignored


def test_permute_seconds_without_permute_is_refused(tmp_path):
    model = mlp(tmp_path / "m.onnx")
    result = run_module("optimize", model, tmp_path / "o.onnx", "--permute-seconds", "5")
    assert result.returncode == 2
    assert "--permute-seconds caps --permute" in result.stderr


def test_python_callers_are_told_python_names(tmp_path):
    model = mlp(tmp_path / "m.onnx")
    with pytest.raises(BadInput, match=r"permute_seconds= caps permute="):
        prune_model(model, tmp_path / "o.onnx", permute_seconds=5)
    with pytest.raises(BadInput, match=r"max_rel_error= must be"):
        prune_model(model, tmp_path / "o.onnx", max_rel_error=-1)


def test_calibration_without_method_means_sparsegpt(tmp_path):
    model = mlp(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((16, 64)).astype(np.float32)} for _ in range(8)]
    result = prune_model(model, tmp_path / "o.onnx", calibration=feeds, validate=False)
    assert result.report["method"] == "sparsegpt"
    assert result.report["calibration"]["method_chosen"] is True


def test_feeds_from_a_generator_a_reader_and_a_loader_script(tmp_path):
    model = mlp(tmp_path / "m.onnx")

    def generate():
        rng = np.random.default_rng(1)
        for _ in range(6):
            yield {"x": rng.standard_normal((8, 64)).astype(np.float32)}

    class Reader:  # onnxruntime.quantization.CalibrationDataReader's protocol
        def __init__(self):
            self.items = iter(list(generate()))

        def get_next(self):
            return next(self.items, None)

    a = prune_model(model, tmp_path / "a.onnx", method="wanda", calibration=generate(), validate=False)
    b = prune_model(model, tmp_path / "b.onnx", method="wanda", calibration=Reader(), validate=False)
    script = tmp_path / "loader.py"
    script.write_text(
        "import numpy as np\n"
        "def load_data():\n"
        "    rng = np.random.default_rng(1)\n"
        "    for _ in range(6):\n"
        "        yield {'x': rng.standard_normal((8, 64)).astype(np.float32)}\n"
        "def other():\n"
        "    return []\n"
    )
    out = tmp_path / "c.onnx"
    cli = run_module("optimize", model, out, "--method", "wanda", "--calibration", script, "--no-validate")
    assert cli.returncode == 0, cli.stderr
    assert digest(tmp_path / "a.onnx") == digest(tmp_path / "b.onnx") == digest(out)
    assert a.report["calibration"]["feeds"] == b.report["calibration"]["feeds"] == 6
    empty = run_module("optimize", model, out, "--calibration", f"{script}:other", "--no-validate")
    assert empty.returncode == 2
    assert "gave no feeds" in empty.stderr
    missing = run_module("optimize", model, out, "--calibration", f"{script}:nope", "--no-validate")
    assert missing.returncode == 2
    assert "defines no function nope()" in missing.stderr


def test_verdict_gives_the_output_size(tmp_path):
    model = mlp(tmp_path / "m.onnx")
    result = prune_model(model, tmp_path / "o.onnx")
    assert " kB, " in result.verdict
    assert "of the input)" in result.verdict


def test_report_describes_the_files_as_committed(tmp_path):
    model = mlp(tmp_path / "m.onnx")
    report = tmp_path / "r.json"
    result = run_module("optimize", model, tmp_path / "o.onnx", "--report", report)
    assert result.returncode == 0, result.stderr
    document = json.loads(report.read_text())
    assert document["output"] == str(tmp_path / "o.onnx")
    assert document["summary"]["output_bytes"] == (tmp_path / "o.onnx").stat().st_size


def test_a_slow_layer_gets_heartbeats_and_its_time(caplog):
    import logging
    import threading

    from sparse24_onnx.passes.weights import WeightRecord
    from sparse24_onnx.pipeline import progress as progress_module

    record = WeightRecord(name="big.weight", source=None, graph="", shape=(8, 8), dtype="FLOAT")
    progress = progress_module.LayerProgress(heartbeat=0.01)
    release = threading.Event()
    with caplog.at_level(logging.INFO, logger="sparse24_onnx"):
        progress(0, 1, record)
        while sum("still pruning big.weight" in r.getMessage() for r in caplog.records) < 2:
            release.wait(0.01)
        progress.finish()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "pruning 1/1: big.weight (8x8)"
    assert sum("still pruning big.weight" in m for m in messages) >= 2


def test_exclude_matching_nothing_and_unknown_feed_keys_are_refused(tmp_path):
    model = mlp(tmp_path / "m.onnx")
    typo = run_module("optimize", model, tmp_path / "o.onnx", "--exclude", "lm_haed")
    assert typo.returncode == 2
    assert "--exclude 'lm_haed' matches no weight" in typo.stderr
    np.savez(tmp_path / "extra.npz", x=np.ones((2, 64), np.float32), labels=np.zeros(2))
    extra = run_module("optimize", model, tmp_path / "o.onnx", "--inputs", tmp_path / "extra.npz")
    assert extra.returncode == 2
    assert "'labels' is no input of the model" in extra.stderr


def test_generated_feeds_follow_ids_through_identity_and_size_images(tmp_path):
    table = numpy_helper.from_array(np.zeros((50, 64), np.float32), "table")
    nodes = [
        helper.make_node("Identity", ["input_ids"], ["ids_out"]),  # the export also returns its ids
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Gather", ["table", "ids32"], ["emb"]),
        helper.make_node("MatMul", ["emb", "w"], ["y"], name="/fc/MatMul"),
        helper.make_node("Cast", ["image"], ["image_f"], to=F),
        helper.make_node("ReduceMean", ["image_f"], ["brightness"], keepdims=0),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 3, "height", "width"]),
    ]
    outputs = [
        helper.make_tensor_value_info("y", F, ["batch", "sequence", 32]),
        helper.make_tensor_value_info("ids_out", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("brightness", F, []),
    ]
    model = _save(tmp_path / "m.onnx", nodes, inputs, outputs, [table, _w("w")])
    result = prune_model(model, tmp_path / "o.onnx")
    fed = {entry["name"]: entry for entry in result.report["validation"]["inputs"]}
    assert fed["input_ids"]["values"] == "integers in [0, 50)"
    assert fed["image"]["shapes"] == [[1, 3, 224, 224]]
    assert fed["image"]["values"] == "integers in [0, 256) (8-bit image values)"


def test_shape_spellings_of_trtexec_and_polygraphy_are_accepted(tmp_path):
    from sparse24_onnx.runtime.feeds import parse_shapes

    assert parse_shapes(["x=2x64", "x:2x64", "x:[2,64]", "input:0:[2, 64]", "seq=16"]) == {
        "x": (2, 64),
        "input:0": (2, 64),
        "seq": (16,),
    }
    with pytest.raises(BadInput, match="expected NAME=DIMS"):
        parse_shapes(["x"])


def test_a_mistyped_command_gets_a_suggestion():
    result = run_module("__main__", "optimise", "a.onnx", "b.onnx")
    assert result.returncode == 2
    assert "did you mean optimize?" in result.stderr


def test_a_missing_side_file_is_named_in_one_short_line(tmp_path):
    model = mlp(tmp_path / "m.onnx")
    onnx.save(
        onnx.load(model), tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=0
    )
    (tmp_path / "ext.data").unlink()
    result = run_module("optimize", tmp_path / "ext.onnx", tmp_path / "o.onnx")
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "its weights are stored in 'ext.data', which is not there" in line
    assert len(line.replace(str(tmp_path), "")) < 160  # was 440 characters of checker and onnxruntime text


def test_the_op_column_names_declined_and_compressed_weights(tmp_path, models_dir):
    from sparse24_onnx.pipeline.check import check_model as check

    table = check(models_dir / "cnn.onnx").table()
    depthwise = next(line for line in table.splitlines() if line.startswith("depthwise.weight"))
    assert " Conv " in depthwise
    out = tmp_path / "c.onnx"
    prune_model(models_dir / "mlp.onnx", out, format="compressed", validate=False)
    for line in check(out).table().splitlines()[1:]:
        assert line.split()[1] in ("MatMul", "Gemm"), line


def test_files_loaders_and_callables_are_streamed_not_held(tmp_path):
    from sparse24_onnx.runtime.feeds import FeedStream, InputSpec, load_feeds

    specs = [InputSpec("x", "tensor(float)", ("batch", 64))]
    calls = []

    def produce():
        calls.append(1)
        rng = np.random.default_rng(5)
        for _ in range(6):
            yield {"x": rng.standard_normal((4, 64)).astype(np.float32)}

    streamed = load_feeds(produce, specs, option="calibration")
    assert isinstance(streamed.feeds, FeedStream)
    assert len(streamed) == 6
    assert len(calls) == 1  # the checking pass kept nothing
    first = [feed["x"] for feed in streamed.feeds]
    held = streamed.feeds[3::4]
    assert len(calls) == 3
    assert [h["x"].tobytes() for h in held] == [first[3].tobytes()]
    listed = load_feeds(list(produce()), specs, option="calibration")
    assert isinstance(listed.feeds, list)
    model = mlp(tmp_path / "m.onnx")
    a = prune_model(model, tmp_path / "a.onnx", method="sparsegpt", calibration=produce, validate=False)
    b = prune_model(model, tmp_path / "b.onnx", method="sparsegpt", calibration=list(produce()), validate=False)
    assert digest(tmp_path / "a.onnx") == digest(tmp_path / "b.onnx")
    assert a.report["calibration"]["feeds"] == b.report["calibration"]["feeds"] == 6


def test_the_report_gives_the_time_of_each_phase(tmp_path):
    model = mlp(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((8, 64)).astype(np.float32)} for _ in range(4)]
    result = prune_model(model, tmp_path / "o.onnx", calibration=feeds)
    timings = result.report["timings"]
    assert list(timings) == ["load", "reference run", "capture", "permutation", "pruning", "saving", "validation"]
    assert all(seconds >= 0 for seconds in timings.values())
