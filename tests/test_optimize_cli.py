"""End to end: ``python -m sparse24_onnx.optimize`` on real ONNX files, checked in onnxruntime."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from sparse24_onnx.core import decompress, is_24, prune_24_magnitude
from sparse24_onnx.optimize import main

from .helpers import digest, error_lines

EXPECTED_AXES = {
    "mlp.onnx": {"fc0.weight": 0, "fc1.weight": 0, "fc2.weight": 0},
    "mlp_fp16.onnx": {"fc0.weight": 0, "fc1.weight": 0, "fc2.weight": 0},
    "gemm.onnx": {"g0.weight": 1, "g1.weight": 0},
    "gemm_trans_a.onnx": {"wa": 0},
    "matmul_a_const.onnx": {"w": 1},
    "transformer.onnx": {f"attn.{p}.weight": 0 for p in "qkvo"} | {"ffn.up.weight": 0, "ffn.down.weight": 0},
    "skips.onnx": {"ok.weight": 0},
}

SHAPES = {"transformer.onnx": {"seq": 8, "batch": 2}, "matmul_a_const.onnx": {"n": 4}, "mlp.onnx": {"batch": 3}}


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    """Run the command in a fresh process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "sparse24_onnx.optimize", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def initializers(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def ort_outputs(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("model", list(EXPECTED_AXES), indirect=True)
def test_prunes_along_the_reduction_axis_and_validates(model, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    report = tmp_path / "report.json"
    before = digest(model)
    shapes = SHAPES.get(model.name, {})
    shape_args = [a for name, dims in shapes.items() for a in ("--shape", f"{name}={dims}")]
    assert main([str(model), str(out), "--report", str(report), *shape_args]) == 0
    assert digest(model) == before  # the input is never modified
    original, pruned = initializers(model), initializers(out)
    assert original.keys() == pruned.keys()
    for name, array in pruned.items():
        axis = EXPECTED_AXES[model.name].get(name)
        if axis is None:  # everything that is not a pruned weight is byte-identical
            assert array.tobytes() == original[name].tobytes(), name
            continue
        assert array.dtype == original[name].dtype
        assert is_24(array, axis), name
        other = 1 - axis if array.ndim == 2 else None
        if other is not None:
            assert not is_24(array, other), f"{name} is 2:4 along {other} too: axis not checked"
        np.testing.assert_array_equal(array, decompress(prune_24_magnitude(original[name], axis)))

    document = json.loads(report.read_text())
    entries = {t["name"]: t for t in document["tensors"]}
    assert {n for n, t in entries.items() if t["status"] == "pruned"} == set(EXPECTED_AXES[model.name])
    for name, axis in EXPECTED_AXES[model.name].items():
        assert entries[name]["axis"] == axis
        assert entries[name]["pruned_count"] == original[name].size // 2
        assert entries[name]["kept_magnitude_mean"] > entries[name]["pruned_magnitude_mean"]
    for entry in entries.values():
        assert (entry["status"] == "skipped") == bool(entry["reason"])

    # The reported validation figures are those of the two models run independently here.
    validation = document["validation"]
    assert validation["feeds"] == 1
    assert validation["passed"] is None
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng_feed = _replay_generated_feed(session, model, shapes)
    reference, candidate = ort_outputs(model, rng_feed), ort_outputs(out, rng_feed)
    for result, y, z in zip(validation["outputs"], reference, candidate, strict=False):
        y64, z64 = y.astype(np.float64), z.astype(np.float64)
        if not y64.any():
            continue
        assert result["rel_l2_error"] == pytest.approx(np.linalg.norm(z64 - y64) / np.linalg.norm(y64), rel=1e-6)
        assert result["max_abs_error"] == pytest.approx(np.abs(z64 - y64).max(), rel=1e-6)
    assert validation["worst_rel_l2_error"] > 0  # something was pruned, so outputs moved
    table = capsys.readouterr().out
    assert "pruned" in table
    assert "rel L2" in table


def _replay_generated_feed(session, model: Path, shapes: dict[str, int]) -> dict[str, np.ndarray]:
    """The feed the tool generates by default (seed 0), rebuilt through the public helpers."""
    from sparse24_onnx.modelio.load import load_model
    from sparse24_onnx.runtime.feeds import InputSpec, generate_feeds, infer_int_ranges

    return generate_feeds(
        InputSpec.from_session(session),
        shapes={name: (dims,) for name, dims in shapes.items()},
        int_ranges=infer_int_ranges(load_model(model)),
        default_int_range=None,
        seed=0,
        count=1,
    ).feeds[0]


@pytest.mark.parametrize("model", ["mlp.onnx"], indirect=True)
def test_everything_else_in_the_model_is_kept(model, tmp_path):
    out = tmp_path / "out.onnx"
    assert main([str(model), str(out), "--quiet"]) == 0
    a, b = onnx.load(str(model)), onnx.load(str(out))
    assert {(o.domain, o.version) for o in a.opset_import} == {(o.domain, o.version) for o in b.opset_import}
    assert list(a.functions) == list(b.functions)
    assert list(a.graph.value_info) == list(b.graph.value_info)
    assert (a.doc_string, a.producer_name, a.graph.doc_string, a.graph.name) == (
        b.doc_string,
        b.producer_name,
        b.graph.doc_string,
        b.graph.name,
    )
    assert list(a.graph.input) == list(b.graph.input)
    assert list(a.graph.output) == list(b.graph.output)
    for x, y in zip(a.graph.node, b.graph.node, strict=True):
        assert (x.name, x.op_type, x.domain, list(x.input), list(x.output), x.doc_string) == (
            y.name,
            y.op_type,
            y.domain,
            list(y.input),
            list(y.output),
            y.doc_string,
        )
        assert list(x.attribute) == list(y.attribute)
    assert [t.name for t in a.graph.initializer] == [t.name for t in b.graph.initializer]
    props = {p.key: p.value for p in b.metadata_props}
    assert {p.key: p.value for p in a.metadata_props}.items() <= props.items()
    provenance = json.loads(props["sparse24"])
    assert provenance["tool"] == "sparse24-onnx"
    assert provenance["method"] == "magnitude"
    assert provenance["tensors"] == {f"fc{i}.weight": {"axis": 0} for i in range(3)}
    onnx.checker.check_model(b, full_check=True)


@pytest.mark.parametrize("model", ["transformer.onnx"], indirect=True)
def test_pruning_twice_changes_nothing(model, tmp_path):
    once, twice = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    assert main([str(model), str(once), "--quiet", "--shape", "seq=16"]) == 0
    report = tmp_path / "again.json"
    assert main([str(once), str(twice), "--quiet", "--shape", "seq=16", "--report", str(report)]) == 0
    first, second = initializers(once), initializers(twice)
    assert all(first[n].tobytes() == second[n].tobytes() for n in first)
    assert json.loads(report.read_text())["validation"]["worst_rel_l2_error"] == 0.0


@pytest.mark.parametrize("model", ["mlp.onnx"], indirect=True)
def test_max_rel_error_bound_sets_exit_code_and_withholds_output(model, tmp_path):
    out = tmp_path / "out.onnx"
    report = tmp_path / "r.json"
    result = cli(model, out, "--max-rel-error", "0.01", "--report", report)
    assert result.returncode == 1
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left
    assert "validation failed" in result.stderr
    assert "Traceback" not in result.stderr
    document = json.loads(report.read_text())
    assert document["exit_code"] == 1
    assert document["output"] is None
    assert document["validation"]["passed"] is False
    worst = document["validation"]["worst_rel_l2_error"]
    ok = cli(model, out, "--max-rel-error", str(worst * 1.01), "--quiet")
    assert ok.returncode == 0
    assert out.exists()
    assert ok.stdout == ""


@pytest.mark.parametrize("model", ["transformer.onnx"], indirect=True)
def test_inputs_from_npz_file_and_folder(model, tmp_path):
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        np.savez(feeds / f"{i}.npz", input_ids=rng.integers(0, 100, (2, 12)).astype(np.int32))
    report = tmp_path / "r.json"
    assert main([str(model), str(tmp_path / "a.onnx"), "--inputs", str(feeds), "--report", str(report), "-q"]) == 0
    validation = json.loads(report.read_text())["validation"]
    assert validation["feeds"] == 3
    assert validation["source"] == str(feeds)
    assert main([str(model), str(tmp_path / "b.onnx"), "--inputs", str(feeds / "0.npz"), "-q"]) == 0


@pytest.mark.parametrize("model", ["transformer.onnx"], indirect=True)
def test_token_id_range_is_inferred_from_the_embedding(model, tmp_path):
    from sparse24_onnx.modelio.load import load_model
    from sparse24_onnx.runtime.feeds import infer_int_ranges

    assert infer_int_ranges(load_model(model)) == {"input_ids": (0, 100)}
    # Out-of-range ids make onnxruntime's Gather fail: a clear bad-input error, not a traceback.
    result = cli(model, tmp_path / "o.onnx", "--int-range", "input_ids=1000:2000")
    assert result.returncode == 2
    assert "onnxruntime cannot run the model" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("model", ["mlp.onnx"], indirect=True)
def test_gradient_method_from_the_command_line(model, tmp_path):
    weights = initializers(model)
    gradients = tmp_path / "g.npz"
    rng = np.random.default_rng(1)
    np.savez(gradients, **{n: rng.standard_normal(w.shape).astype(np.float32) for n, w in weights.items()})
    out = tmp_path / "out.onnx"
    assert main([str(model), str(out), "--method", "gradient", "--gradients", str(gradients), "-q"]) == 0
    pruned = initializers(out)
    with np.load(gradients) as g:
        importance = np.abs(weights["fc1.weight"] * g["fc1.weight"])
    assert is_24(pruned["fc1.weight"], 0)
    kept = pruned["fc1.weight"] != 0
    # In each group of 4 along axis 0, the kept elements have the two largest |w*g|.
    groups = importance.reshape(-1, 4, importance.shape[1])
    kept_groups = kept.reshape(-1, 4, kept.shape[1])
    smallest_kept = np.where(kept_groups, groups, np.inf).min(axis=1)
    largest_pruned = np.where(kept_groups, -np.inf, groups).max(axis=1)
    assert np.all(smallest_kept >= largest_pruned)
    assert (
        json.loads(dict((p.key, p.value) for p in onnx.load(str(out)).metadata_props)["sparse24"])["method"]
        == "gradient"
    )


@pytest.mark.parametrize("model", ["mlp.onnx"], indirect=True)
def test_external_data_output(model, tmp_path):
    out = tmp_path / "sub" / "out.onnx"
    out.parent.mkdir()
    assert main([str(model), str(out), "--external-data", "-q"]) == 0
    assert (out.parent / "out.onnx.data").stat().st_size > 0
    proto = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    # Re-pruning the external-data model into a third folder reads the side file relative to its model.
    again = tmp_path / "again.onnx"
    assert main([str(out), str(again), "-q"]) == 0
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in onnx.load(str(again)).graph.initializer)
    assert is_24(initializers(again)["fc1.weight"], 0)


@pytest.mark.parametrize("model", ["mlp.onnx"], indirect=True)
def test_no_validate_and_exclude(model, tmp_path):
    out = tmp_path / "out.onnx"
    report = tmp_path / "r.json"
    result = cli(model, out, "--no-validate", "--exclude", "fc2", "--report", report)
    assert result.returncode == 0, result.stderr
    assert "not validated" in result.stdout
    document = json.loads(report.read_text())
    assert document["validation"] is None
    statuses = {t["name"]: t["status"] for t in document["tensors"]}
    assert statuses == {"fc0.weight": "pruned", "fc1.weight": "pruned", "fc2.weight": "skipped"}
    assert initializers(out)["fc2.weight"].tobytes() == initializers(model)["fc2.weight"].tobytes()


def test_nothing_to_prune(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = cli(path, tmp_path / "out.onnx")
    assert result.returncode == 0
    assert "nothing to prune" in result.stdout
    assert (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("module", ["optimize", "check", "expand"])
def test_text_that_is_not_utf8_is_bad_input(models_dir, tmp_path, module):
    # A damaged string field parses (protobuf keeps its bytes) but could never be written back.
    data = (models_dir / "mlp.onnx").read_bytes()
    assert data.count(b"layer 2 product") == 1
    (tmp_path / "bad.onnx").write_bytes(data.replace(b"layer 2 product", b"layer 2 produc\xce"))
    args = {"check": ["bad.onnx"], "expand": ["bad.onnx", "out.onnx"]}.get(module, ["bad.onnx", "out.onnx", "-q"])
    result = subprocess.run(
        [sys.executable, "-m", f"sparse24_onnx.{module}", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [
        "sparse24: error: bad.onnx: not a valid ONNX model: "
        "graph.node.doc_string holds text that is not UTF-8 (damaged file?)"
    ]
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("optimize", ["pipe"]),
        ("optimize", ["out.onnx", "--external-data"]),  # its side file out.onnx.data is the pipe
        ("expand", ["pipe"]),
    ],
)
def test_output_never_replaces_a_device_or_pipe(models_dir, tmp_path, module, args):
    # OUT's files are renamed into place; run as root on `/dev/null` that would have put a
    # regular file where the device was.  A pipe stands in for it here.
    model = tmp_path / "model.onnx"
    model.write_bytes((models_dir / "mlp.onnx").read_bytes())
    pipe = tmp_path / ("out.onnx.data" if "--external-data" in args else "pipe")
    os.mkfifo(pipe)
    result = subprocess.run(
        [sys.executable, "-m", f"sparse24_onnx.{module}", "model.onnx", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert "is not a regular file" in result.stderr
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx", pipe.name])


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["missing.onnx", "out.onnx"], "no such file"),
        ("folder", ["folder", "out.onnx"], "is a directory"),
        ("empty", ["empty.onnx", "out.onnx"], "empty file"),
        ("text", ["text.onnx", "out.onnx"], "not an ONNX model"),
        ("truncated", ["truncated.onnx", "out.onnx"], "not an ONNX model"),
        ("model", ["model.onnx", "model.onnx"], "OUT is the input model"),
        ("model", ["model.onnx", "nowhere/out.onnx"], "output folder does not exist"),
        ("model", ["model.onnx", "out.onnx", "--shape", "bogus=3"], "no input or named dimension 'bogus'"),
        ("model", ["model.onnx", "out.onnx", "--shape", "x=1x2x3"], "the model declares"),
        ("model", ["model.onnx", "out.onnx", "--shape", "x"], "expected NAME=DIMS"),
        ("model", ["model.onnx", "out.onnx", "--exclude", "("], "not a regular expression"),
        ("model", ["model.onnx", "out.onnx", "--method", "gradient"], "needs --gradients"),
        ("model", ["model.onnx", "out.onnx", "--inputs", "wrong.npz"], "no array for input 'x'"),
        ("model", ["model.onnx", "out.onnx", "--inputs", "misshaped.npz"], "has shape [2, 3]"),
        ("model", ["model.onnx", "out.onnx", "--inputs", "truncated.npz"], "not a readable .npz file"),
        ("model", ["model.onnx", "out.onnx", "--inputs", "single.npy"], "holds one unnamed array (.npy)"),
        ("model", ["model.onnx", "out.onnx", "--inputs", "nan.npz"], "holds NaN or Inf"),
        ("model", ["model.onnx", "out.onnx", "--method", "wanda", "--calibration", "truncated.npz"], "--calibration"),
        ("model", ["model.onnx", "out.onnx", "--int-range", "5:1"], "LOW < HIGH"),
        ("model", ["model.onnx", "out.onnx", "--method", "sparse"], "invalid choice"),
        ("model", ["model.onnx", "out.onnx", "--no-validate", "--max-rel-error", "1"], "--no-validate with"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(models_dir, tmp_path, setup, args, message):
    model = tmp_path / "model.onnx"
    model.write_bytes((models_dir / "mlp.onnx").read_bytes())
    if setup == "folder":
        (tmp_path / "folder").mkdir()
    elif setup == "empty":
        (tmp_path / "empty.onnx").write_bytes(b"")
    elif setup == "text":
        (tmp_path / "text.onnx").write_text("this is not a model\n" * 20)
    elif setup == "truncated":
        (tmp_path / "truncated.onnx").write_bytes(model.read_bytes()[:1000])
    np.savez(tmp_path / "wrong.npz", y=np.zeros((1, 64), np.float32))
    np.savez(tmp_path / "misshaped.npz", x=np.zeros((2, 3), np.float32))
    np.savez(tmp_path / "nan.npz", x=np.full((1, 64), np.nan, np.float32))
    np.save(tmp_path / "single.npy", np.zeros((1, 64), np.float32))
    np.savez(tmp_path / "good.npz", x=np.zeros((1, 64), np.float32))
    (tmp_path / "truncated.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:100])
    before = digest(model)
    result = subprocess.run(
        [sys.executable, "-m", "sparse24_onnx.optimize", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[sparse24] ")]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert digest(model) == before
    assert not (tmp_path / "out.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def test_model_that_onnxruntime_cannot_load(tmp_path):
    from onnx import TensorProto, helper

    weight = numpy_helper.from_array(np.ones((16, 8), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("NoSuchOp", ["m"], ["y"], domain="acme")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [weight],
    )
    path = tmp_path / "custom.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)])
    onnx.save(model, path)
    result = cli(path, tmp_path / "out.onnx")
    assert result.returncode == 2
    assert "onnxruntime cannot load" in result.stderr
    assert "--no-validate" in result.stderr
    assert not (tmp_path / "out.onnx").exists()
    ok = cli(path, tmp_path / "out.onnx", "--no-validate", "--quiet")
    assert ok.returncode == 0
    assert is_24(initializers(tmp_path / "out.onnx")["w"], 0)


@pytest.mark.parametrize("model", ["mlp.onnx"], indirect=True)
def test_report_to_a_pipe_or_stdout_is_written_not_replaced(model, tmp_path):
    # A CI step may read the report from a pipe (or /dev/stdout): it is written there as is.
    # (/dev/stdout itself is not used here: a regression would replace the machine's.)
    pipe = tmp_path / "report.pipe"
    os.mkfifo(pipe)
    received: list[str] = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text()), daemon=True)
    reader.start()
    result = cli(model, tmp_path / "out.onnx", "--no-validate", "-q", "--report", pipe)
    reader.join(timeout=60)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert json.loads(received[0])["command"] == "optimize"
    result = cli(model, tmp_path / "out3.onnx", "--no-validate", "--report", tmp_path)
    assert result.returncode == 2
    assert "is a directory" in result.stderr


def test_sigterm_removes_the_staged_output(tmp_path):
    # A CI job's time limit sends SIGTERM: the half-written OUT must not be left behind.
    # (In a child process: were the handler missing, SIGTERM would end the test run.)
    script = f"""
import os, signal, sys, time
from pathlib import Path
from sparse24_onnx.cli.common import run_main
from sparse24_onnx.modelio.staging import StagedOutput

before = signal.getsignal(signal.SIGTERM)

def body():
    with StagedOutput(Path({str(tmp_path / "out.onnx")!r}), external_data=True) as staged:
        (staged.folder / "partial.bin").write_bytes(bytes(1000))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this at once
    return 0

code = run_main(body)
print(code, signal.getsignal(signal.SIGTERM) is before)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["143", "True"], result.stderr
    assert result.stderr.strip() == "sparse24: terminated"
    assert list(tmp_path.iterdir()) == []
