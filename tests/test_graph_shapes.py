"""The graph shapes real exporters produce: each pruned along the right axis or skipped with its reason."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from sparse24_onnx.check import main as check_main
from sparse24_onnx.core import decompress, is_24, prune_24_magnitude
from sparse24_onnx.optimize import main as optimize_main

from .helpers import all_tensors, digest, error_lines, run_module

# model -> {weight: axis it must be 2:4 along, or the text its skip reason must contain}
EXPECTED = {
    "constant_nodes.onnx": {"w0": 0, "w1": 1, "w2": 0},
    "subgraphs.onnx": {"outer.weight": 0, "then.weight": 0, "else.weight": 0, "loop.weight": 0, "nested.weight": 0},
    "function.onnx": {"dense.weight": 0, "fixed.weight": 0},
    "cast_transpose.onnx": {"cast.weight": 0, "t.weight": 1, "tg.weight": 0},
    "quantized.onnx": {
        "dq.weight": 0,  # int8 through DequantizeLinear: pruned entries become the zero point
        "cm.weight": 0,  # int8 -> Cast -> Mul(scale), a weight-only export
        "mmi.weight": "INT8, input of the integer op MatMulInteger",
        "float.weight": 0,
    },
    "shared_gemm.onnx": {"cell.weight_hh": 1, "cell.weight_ih": 1},
    "both_constant.onnx": {"b.weight": 0},
    "opset7.onnx": {"w0": 0, "w1": 1},
    "ir3.onnx": {"w0": 0, "w1": 1},  # IR < 4: initializers listed as inputs are constants (onnxruntime)
    "odd_shapes.onnx": {"w": 0},
    "nan_weights.onnx": {"nan.weight": "NaN or Inf", "inf.weight": "NaN or Inf", "clean.weight": 0},
    "cnn.onnx": {
        "conv_rgb.weight": "only 3 input channels (an RGB input layer?)",
        "conv2d.weight": 1,
        "grouped.weight": 1,
        "depthwise.weight": "depthwise convolution (group=32",
        "conv20.weight": "length 20, not a multiple of 16",
        "up.weight": "ConvTranspose: TensorRT has no sparse kernels for deconvolution",
        "conv1d.weight": 1,
        "conv3d.weight": 1,
    },
}
SHAPES = {"subgraphs.onnx": ["--shape", "batch=3"]}


@pytest.mark.parametrize("model", list(EXPECTED), indirect=True)
def test_pruned_along_the_right_axis_or_skipped_with_reason(model, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    before = digest(model)
    assert optimize_main([str(model), str(out), "--report", str(report), "-q", *SHAPES.get(model.name, [])]) == 0
    assert digest(model) == before
    original, pruned = all_tensors(model), all_tensors(out)
    assert original.keys() == pruned.keys()
    entries = {t["name"]: t for t in json.loads(report.read_text())["tensors"]}
    assert entries.keys() == EXPECTED[model.name].keys()
    for name, array in pruned.items():
        expected = EXPECTED[model.name].get(name)
        if isinstance(expected, int):
            assert entries[name]["status"] == "pruned", entries[name]
            assert entries[name]["axis"] == expected
            assert is_24(array, expected), name
            assert not is_24(array, 1 - expected), f"{name}: the axis is not really checked"
            if array.ndim > 2:  # TensorRT's rule for Conv: per output channel and kernel position
                m, c = array.shape[:2]
                assert ((array.reshape(m, c // 4, 4, -1) != 0).sum(axis=2) <= 2).all()
            np.testing.assert_array_equal(array, decompress(prune_24_magnitude(original[name], expected)))
        else:
            assert array.tobytes() == original[name].tobytes(), f"{name} changed but must not"
            if expected is not None:
                assert entries[name]["status"] == "skipped"
                assert expected in entries[name]["reason"], entries[name]["reason"]
    validation = json.loads(report.read_text())["validation"]
    assert all(np.isfinite(o["rel_l2_error"]) for o in validation["outputs"])
    # The CI gate agrees: the result passes, the original (where anything was prunable) does not.
    assert check_main([str(out), "-q"]) == 0
    prunable = any(isinstance(v, int) for v in EXPECTED[model.name].values())
    assert check_main([str(model), "-q"]) == (1 if prunable else 0)


@pytest.mark.parametrize("model", ["constant_nodes.onnx", "subgraphs.onnx", "function.onnx"], indirect=True)
def test_rest_of_the_model_is_kept(model, tmp_path):
    out = tmp_path / "out.onnx"
    assert optimize_main([str(model), str(out), "-q", *SHAPES.get(model.name, [])]) == 0
    a, b = onnx.load(str(model)), onnx.load(str(out))
    assert [n.name for n in a.graph.node] == [n.name for n in b.graph.node]
    assert [f.name for f in a.functions] == [f.name for f in b.functions]
    assert [[n.name for n in f.node] for f in a.functions] == [[n.name for n in f.node] for f in b.functions]
    assert {(o.domain, o.version) for o in a.opset_import} == {(o.domain, o.version) for o in b.opset_import}


@pytest.mark.parametrize("model", ["mlp.onnx"], indirect=True)
def test_idempotent(model, tmp_path):
    once, twice = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    assert optimize_main([str(model), str(once), "-q"]) == 0
    assert optimize_main([str(once), str(twice), "-q"]) == 0
    first, second = all_tensors(once), all_tensors(twice)
    assert all(first[n].tobytes() == second[n].tobytes() for n in first)


def _external_copy(models_dir: Path, folder: Path, name="mlp.onnx", location="weights.bin", threshold=0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(models_dir / name))
    path = folder / name
    onnx.save(model, path, save_as_external_data=True, location=location, size_threshold=threshold)
    return path


@pytest.mark.parametrize("module", ["optimize", "check", "expand"])
@pytest.mark.parametrize(
    ("damage", "message"), [("truncate", "external data ends early"), ("length", "declares 100 bytes")]
)
def test_external_data_that_does_not_hold_the_tensor_is_bad_input(models_dir, tmp_path, module, damage, message):
    source = _external_copy(models_dir, tmp_path / "in")
    side = source.parent / "weights.bin"
    if damage == "truncate":
        side.write_bytes(side.read_bytes()[:1000])
    else:
        proto = onnx.load(str(source), load_external_data=False)
        entries = proto.graph.initializer[0].external_data
        for entry in entries:
            if entry.key == "length":
                entry.value = "100"
        if not any(entry.key == "length" for entry in entries):
            entries.add(key="length", value="100")
        onnx.save(proto, source)
    args = [source] if module == "check" else [source, tmp_path / "out.onnx"]
    result = run_module(module, *args)
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1
    assert message in result.stderr


@pytest.mark.parametrize("module", ["optimize", "check"])
def test_sparse_initializers_are_refused_not_dropped(tmp_path, module):
    # onnx-ir does not carry ONNX's sparse_initializer: the weight vanished from the output.
    from onnx import TensorProto, helper, numpy_helper

    dense = np.zeros((64, 32), np.float32)
    dense[::3, ::2] = 1.0
    index = np.flatnonzero(dense).astype(np.int64)
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(dense.reshape(-1)[index], "w"), numpy_helper.from_array(index, "w_index"), [64, 32]
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
    )
    graph.sparse_initializer.append(sparse)
    path = tmp_path / "sparse.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    args = [path] if module == "check" else [path, tmp_path / "out.onnx"]
    result = run_module(module, *args)
    assert result.returncode == 2, result.stderr
    assert len(error_lines(result)) == 1
    assert "holds sparse_initializer tensors (w)" in result.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_training_info_is_refused_not_dropped(models_dir, tmp_path):
    # onnx-ir does not carry training_info either; OUT would silently lose it.
    model = onnx.load(str(models_dir / "mlp.onnx"))
    model.training_info.add().initialization.name = "init"
    onnx.save(model, tmp_path / "train.onnx")
    result = run_module("optimize", tmp_path / "train.onnx", tmp_path / "out.onnx")
    assert result.returncode == 2, result.stderr
    assert "holds training_info" in error_lines(result)[0]
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("module", ["optimize", "expand"])
def test_out_may_not_be_the_inputs_side_file(models_dir, tmp_path, module):
    # The side file is part of the input: writing OUT over it would destroy the input's weights.
    source = _external_copy(models_dir, tmp_path / "in")
    side = source.parent / "weights.bin"
    side_digest = digest(side)
    result = run_module(module, source, side, "--no-validate" if module == "optimize" else "-q")
    assert result.returncode == 2, result.stderr
    assert "OUT is the input's external data file" in result.stderr
    assert digest(side) == side_digest
    assert sorted(p.name for p in source.parent.iterdir()) == ["mlp.onnx", "weights.bin"]


def test_external_data_in_and_out(models_dir, tmp_path):
    source = _external_copy(models_dir, tmp_path / "in")
    side = source.parent / "weights.bin"
    side_digest = digest(side)
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    # Run from another working folder: side files resolve relative to the model, not the cwd.
    result = run_module("optimize", source, out, "--external-data", "-q", cwd=tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert digest(side) == side_digest  # IN's side file untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    proto = onnx.load(str(out), load_external_data=False)
    locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"}
    assert is_24(all_tensors(out)["fc1.weight"], 0)
    assert check_main([str(out), "-q"]) == 0


def test_side_file_never_overwrites_the_inputs(models_dir, tmp_path):
    source = _external_copy(models_dir, tmp_path, location="out.onnx.data")
    before = digest(tmp_path / "out.onnx.data")
    result = run_module("optimize", source, tmp_path / "out.onnx", "--external-data")
    assert result.returncode == 2
    assert "would overwrite the input's external data" in error_lines(result)[0]
    assert digest(tmp_path / "out.onnx.data") == before
    assert not (tmp_path / "out.onnx").exists()


def test_missing_side_file_is_bad_input(models_dir, tmp_path):
    source = _external_copy(models_dir, tmp_path)
    (tmp_path / "weights.bin").unlink()
    result = run_module("optimize", source, tmp_path / "out.onnx")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1
    assert "weights.bin" in lines[0]
    assert "Traceback" not in result.stderr


def test_checker_rejection_and_unwritable_output(models_dir, tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["nowhere"], ["y"])],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    broken = tmp_path / "broken.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), broken)
    result = run_module("optimize", broken, tmp_path / "out.onnx")
    assert result.returncode == 2
    assert "the ONNX checker rejects the model" in error_lines(result)[0]
    result = run_module("check", broken)
    assert result.returncode == 2
    assert "the ONNX checker rejects the model" in result.stderr

    model = tmp_path / "mlp.onnx"
    shutil.copy(models_dir / "mlp.onnx", model)
    for out in ("/proc/sparse24-test.onnx", str(model / "out.onnx")):  # root can write anywhere else
        result = run_module("optimize", model, out, "--no-validate")
        assert result.returncode == 2, out
        lines = error_lines(result)
        assert len(lines) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_check_reports_and_exit_codes(models_dir, tmp_path):
    model = tmp_path / "mlp.onnx"
    shutil.copy(models_dir / "mlp.onnx", model)
    out = tmp_path / "out.onnx"
    assert optimize_main([str(model), str(out), "-q", "--exclude", "fc2"]) == 0
    report = tmp_path / "check.json"
    result = run_module("check", out, "--report", report)
    assert result.returncode == 0, result.stdout
    assert "OK: all 2 eligible weights are 2:4" in result.stdout
    document = json.loads(report.read_text())
    assert document["summary"] == {
        "weights_found": 3,
        "sparse": 2,
        "not_sparse": 0,
        "skipped": 1,
        "left_dense_on_purpose": 1,
    }
    statuses = {t["name"]: (t["status"], t["reason"]) for t in document["tensors"]}
    assert statuses["fc2.weight"][0] == "skipped"
    assert "left dense on purpose" in statuses["fc2.weight"][1]
    strict = run_module("check", out, "--strict")
    assert strict.returncode == 1
    assert "fc2.weight" in strict.stdout
    assert "FAIL: 1 of 3 eligible weights are not 2:4" in strict.stdout
    assert run_module("check", out, "--strict", "--exclude", "fc2", "-q").returncode == 0
    for bad in (["missing.onnx"], [out, "--exclude", "("], [out, "--bogus"]):
        result = run_module("check", *bad)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1


def _polygraphy_verdicts(path: Path) -> dict[str, bool]:
    import subprocess
    import sys

    polygraphy = Path(sys.executable).with_name("polygraphy")
    result = subprocess.run(
        [str(polygraphy), "inspect", "sparsity", str(path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    verdicts = {}
    for line in result.stdout.splitlines() + result.stderr.splitlines():
        for marker, sparse in (("Found sparse tensor: ", True), ("Found non-sparse tensor: ", False)):
            if marker in line:
                verdicts[line.split(marker, 1)[1].strip()] = sparse
    return verdicts


@pytest.mark.skipif(
    not (Path(os.sys.executable).with_name("polygraphy")).exists(), reason="polygraphy is not installed"
)
@pytest.mark.parametrize("name", ["mlp.onnx", "gemm.onnx", "cast_transpose.onnx", "matmul_a_const.onnx"])
def test_check_agrees_with_polygraphy(models_dir, tmp_path, name):
    model = models_dir / name
    half = tmp_path / "half.onnx"
    first = {"mlp.onnx": "fc0", "gemm.onnx": "g0", "cast_transpose.onnx": "cast", "matmul_a_const.onnx": None}
    # Prune all but one weight, so both verdicts occur.
    exclude = ["--exclude", first[name]] if first[name] else []
    assert optimize_main([str(model), str(half), "-q", "--no-validate", *exclude]) == 0
    compared = 0
    for path in (model, half):
        ours_report = tmp_path / "ours.json"
        check_main([str(path), "-q", "--strict", "--report", str(ours_report)])
        ours = {
            t["name"]: t["status"] == "2:4"
            for t in json.loads(ours_report.read_text())["tensors"]
            if t["status"] in ("2:4", "not 2:4")
        }
        theirs = _polygraphy_verdicts(path)
        both = ours.keys() & theirs.keys()
        assert both, (ours, theirs)
        assert {n: ours[n] for n in both} == {n: theirs[n] for n in both}
        compared += len(both)
    assert compared >= 2


def test_streamed_path_is_byte_identical_to_in_memory_path(models_dir, tmp_path, monkeypatch):
    import sparse24_onnx.passes.prune_weights as prune_weights

    # Blocks of a few rows, so every weight streams through several blocks.
    monkeypatch.setattr(prune_weights, "BLOCK_BYTES", 4096)
    blocks = []
    original_blocks = prune_weights._row_blocks

    def counted(*args):
        for rows in original_blocks(*args):
            blocks.append(rows)
            yield rows

    monkeypatch.setattr(prune_weights, "_row_blocks", counted)
    source = _external_copy(models_dir, tmp_path / "in", name="transformer.onnx", threshold=1024)
    streamed, in_memory = tmp_path / "streamed" / "m.onnx", tmp_path / "memory.onnx"
    streamed.parent.mkdir()
    streamed_report, memory_report = tmp_path / "s.json", tmp_path / "m.json"
    args = ["-q", "--shape", "seq=8"]
    assert optimize_main([str(source), str(streamed), "--external-data", "--report", str(streamed_report), *args]) == 0
    assert len(blocks) >= 6 * 4  # 6 weights, 4 or more blocks each: the streamed route ran
    streamed_blocks = len(blocks)
    assert optimize_main([str(source), str(in_memory), "--report", str(memory_report), *args]) == 0
    assert len(blocks) == streamed_blocks  # and the embedded output did not stream
    a, b = all_tensors(streamed), all_tensors(in_memory)
    assert a.keys() == b.keys()
    assert all(a[n].tobytes() == b[n].tobytes() and a[n].dtype == b[n].dtype for n in a)
    # The model around the tensors is the same too.
    pa, pb = onnx.load(str(streamed), load_external_data=False), onnx.load(str(in_memory))
    assert list(pa.graph.node) == list(pb.graph.node)
    assert list(pa.metadata_props) == list(pb.metadata_props)
    # Metrics summed block by block equal the whole-tensor ones.
    ta = {t["name"]: t for t in json.loads(streamed_report.read_text())["tensors"]}
    tb = {t["name"]: t for t in json.loads(memory_report.read_text())["tensors"]}
    for name in ta:
        for key in ("pruned_count", "total_count"):
            assert ta[name][key] == tb[name][key]
        for key in ("approximation_error", "kept_magnitude_mean", "pruned_magnitude_mean"):
            assert ta[name][key] == pytest.approx(tb[name][key], rel=1e-6, abs=1e-12)
    assert json.loads(streamed_report.read_text())["validation"] == json.loads(memory_report.read_text())["validation"]


def test_nan_found_while_streaming_keeps_the_original(models_dir, tmp_path, monkeypatch):
    import sparse24_onnx.passes.prune_weights as prune_weights

    monkeypatch.setattr(prune_weights, "BLOCK_BYTES", 256)
    source = _external_copy(models_dir, tmp_path / "in", name="nan_weights.onnx")
    out = tmp_path / "out.onnx"
    report = tmp_path / "r.json"
    assert optimize_main([str(source), str(out), "--external-data", "-q", "--report", str(report)]) == 0
    statuses = {t["name"]: t["status"] for t in json.loads(report.read_text())["tensors"]}
    assert statuses == {"nan.weight": "skipped", "inf.weight": "skipped", "clean.weight": "pruned"}
    original, result = all_tensors(source), all_tensors(out)
    for name in ("nan.weight", "inf.weight"):
        assert original[name].tobytes() == result[name].tobytes()
    assert is_24(result["clean.weight"], 0)


def test_tc_shapes_rule_can_be_relaxed(models_dir, tmp_path):
    report = tmp_path / "r.json"
    out = tmp_path / "o.onnx"
    assert (
        optimize_main([str(models_dir / "cnn.onnx"), str(out), "-q", "--tc-shapes", "off", "--report", str(report)])
        == 0
    )
    statuses = {t["name"]: t["status"] for t in json.loads(report.read_text())["tensors"]}
    assert statuses["conv20.weight"] == "pruned"
    assert statuses["conv_rgb.weight"] == "skipped"  # 3 channels: not even a group of 4
    assert is_24(all_tensors(out)["conv20.weight"], 1)
    # check reads the rule from the model's metadata: the extra weight is fine there...
    assert check_main([str(out), "-q"]) == 0
    # ...and with the strict rule it simply is not required.
    assert check_main([str(out), "-q", "--tc-shapes", "strict"]) == 0
    # A model pruned under strict fails a check that demands every multiple of 4.
    strict = tmp_path / "s.onnx"
    assert optimize_main([str(models_dir / "cnn.onnx"), str(strict), "-q", "--no-validate"]) == 0
    assert check_main([str(strict), "-q", "--tc-shapes", "off"]) == 1
