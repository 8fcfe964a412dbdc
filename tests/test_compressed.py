"""The compressed 2:4 format: bit-identical outputs in stock onnxruntime, half the size, exact expand."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from models.build_models import square_mlp
from sparse24_onnx.check import main as check_main
from sparse24_onnx.core import decompress, prune_24_dense
from sparse24_onnx.expand import main as expand_main
from sparse24_onnx.modelio.compressed import read_sparse_weights
from sparse24_onnx.modelio.load import load_model
from sparse24_onnx.optimize import main as optimize_main

from .helpers import all_tensors, packaged_file

MODELS = [
    "mlp.onnx",
    "mlp_fp16.onnx",
    "gemm.onnx",
    "gemm_trans_a.onnx",
    "matmul_a_const.onnx",
    "transformer.onnx",
    "skips.onnx",
    "constant_nodes.onnx",
    "subgraphs.onnx",
    "function.onnx",
    "cast_transpose.onnx",
    "shared_gemm.onnx",
    "both_constant.onnx",
    "cnn.onnx",
]


def _feed(path, seed=0):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    feed = {}
    for arg in session.get_inputs():
        dims = [d if isinstance(d, int) else 3 for d in arg.shape]
        if arg.type == "tensor(bool)":
            feed[arg.name] = np.array(True)
        elif arg.type == "tensor(int64)":
            feed[arg.name] = rng.integers(0, 100, dims).astype(np.int64)
        elif arg.type in ("tensor(int32)", "tensor(int8)"):
            feed[arg.name] = rng.integers(-3, 3, dims).astype(np.int32 if "32" in arg.type else np.int8)
        else:
            dtype = np.float16 if arg.type == "tensor(float16)" else np.float32
            feed[arg.name] = rng.standard_normal(dims).astype(dtype)
    return feed


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("model", MODELS, indirect=True)
def test_compressed_runs_bit_identical_and_expands_exactly(model, tmp_path):
    dense, compressed, expanded = tmp_path / "d.onnx", tmp_path / "c.onnx", tmp_path / "e.onnx"
    report = tmp_path / "c.json"
    assert optimize_main([str(model), str(dense), "-q", "--no-validate"]) == 0
    assert optimize_main([str(model), str(compressed), "-q", "--format", "compressed", "--report", str(report)]) == 0
    document = json.loads(report.read_text())
    pruned = {t["name"] for t in document["tensors"] if t["status"] == "pruned"}
    assert pruned
    assert {t["name"] for t in document["tensors"] if t["storage"] == "compressed"} == pruned
    assert document["validation"]["passed"] is None
    # onnxruntime gives the dense-pruned model's outputs, bit for bit.
    feed = _feed(model)
    for a, b in zip(_run(dense, feed), _run(compressed, feed), strict=True):
        assert a.dtype == b.dtype
        assert a.tobytes() == b.tobytes()
    # Read back without running the graph: the same 2:4 tensors.
    sparse = read_sparse_weights(load_model(compressed))
    dense_tensors = all_tensors(dense)
    assert sparse.keys() == pruned
    for name, tensor in sparse.items():
        assert decompress(tensor).tobytes() == dense_tensors[name].tobytes()
    # check accepts it; expand gives the dense model back exactly.
    assert check_main([str(compressed), "-q"]) == 0
    assert expand_main([str(compressed), str(expanded), "-q"]) == 0
    assert onnx.load(str(expanded)) == onnx.load(str(dense))


def _all_pruned_mlp(path, dtype, layers=4, side=512):
    onnx.save(square_mlp(layers, side, dtype), path)


@pytest.mark.parametrize(("dtype", "bound"), [(np.float32, 0.54), (np.float16, 0.57)])
def test_file_size_targets(tmp_path, dtype, bound):
    source = tmp_path / "mlp.onnx"
    _all_pruned_mlp(source, dtype)
    dense, compressed = tmp_path / "d.onnx", tmp_path / "c.onnx"
    assert optimize_main([str(source), str(dense), "-q", "--no-validate"]) == 0
    assert optimize_main([str(source), str(compressed), "-q", "--no-validate", "--format", "compressed"]) == 0
    ratio = compressed.stat().st_size / dense.stat().st_size
    assert ratio <= bound, ratio


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_no_warnings_when_onnxruntime_loads_it(tmp_path, dtype):
    source = tmp_path / "mlp.onnx"
    _all_pruned_mlp(source, dtype)
    compressed = tmp_path / "c.onnx"
    assert optimize_main([str(source), str(compressed), "-q", "--no-validate", "--format", "compressed"]) == 0
    # Default session options and logging, in a fresh process: nothing on stderr.
    code = (
        "import numpy as np, onnxruntime as ort, sys\n"
        f"s = ort.InferenceSession({str(compressed)!r})\n"
        f"s.run(None, {{'x': np.ones((1, 512), np.{np.dtype(dtype).name})}})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("external", [False, True])
def test_old_opsets_keep_dense_storage_with_reason(models_dir, tmp_path, external):
    (tmp_path / "out").mkdir()
    out, report = tmp_path / "out" / "c.onnx", tmp_path / "r.json"
    args = [str(models_dir / "opset7.onnx"), str(out), "-q", "--format", "compressed", "--report", str(report)]
    assert optimize_main(args + (["--external-data"] if external else [])) == 0
    # With external data the dense-pruned weights went through the scratch file and on to OUT's.
    assert sorted(p.name for p in out.parent.iterdir()) == ["c.onnx", *(["c.onnx.data"] if external else [])]
    dense = tmp_path / "d.onnx"
    assert optimize_main([str(models_dir / "opset7.onnx"), str(dense), "-q", "--no-validate"]) == 0
    a, b = all_tensors(out), all_tensors(dense)
    assert all(a[n].tobytes() == b[n].tobytes() for n in b)
    # check and expand read such a model: nothing is compressed, every weight is 2:4.
    assert check_main([str(out)]) == 0
    assert expand_main([str(out), str(tmp_path / "e.onnx"), "-q"]) == 0
    assert (tmp_path / "e.onnx").read_bytes() == dense.read_bytes()  # the dense route's file, byte for byte
    tensors = {t["name"]: t for t in json.loads(report.read_text())["tensors"]}
    for entry in tensors.values():
        assert entry["status"] == "pruned"
        assert entry["storage"] == "dense"
        assert "needs opset 9" in entry["storage_note"]
    assert {p.domain for p in onnx.load(str(out)).opset_import} == {""}
    assert onnx.load(str(out)).opset_import[0].version == 7


def test_compressed_with_external_data(models_dir, tmp_path):
    out = tmp_path / "out" / "c.onnx"
    out.parent.mkdir()
    assert (
        optimize_main(
            [
                str(models_dir / "transformer.onnx"),
                str(out),
                "-q",
                "--format",
                "compressed",
                "--external-data",
                "--shape",
                "seq=8",
            ]
        )
        == 0
    )
    proto = onnx.load(str(out), load_external_data=False)
    external = {t.name for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert "attn.q.weight.sparse24_values" in external
    dense = tmp_path / "d.onnx"
    assert optimize_main([str(models_dir / "transformer.onnx"), str(dense), "-q", "--no-validate"]) == 0
    expanded = tmp_path / "e.onnx"
    assert expand_main([str(out), str(expanded), "-q"]) == 0
    a, b = all_tensors(expanded), all_tensors(dense)
    assert all(a[n].tobytes() == b[n].tobytes() for n in b)


@pytest.mark.parametrize("source_external", [False, True])
def test_compressed_external_route_equals_in_memory_route(models_dir, tmp_path, source_external, monkeypatch):
    # With external data the pruned weights wait in a scratch side file, not in memory,
    # until they are compressed; the result must not change, and no scratch is left.
    import sparse24_onnx.pipeline.prune as optimize

    scratches = []
    original = optimize._scratch
    monkeypatch.setattr(optimize, "_scratch", lambda out: scratches.append(original(out)) or scratches[-1])
    source = models_dir / "transformer.onnx"
    if source_external:  # its weights stream from a side file in blocks
        (tmp_path / "in").mkdir()
        source, model = tmp_path / "in" / "t.onnx", onnx.load(str(source))
        onnx.save(model, source, save_as_external_data=True, location="t.bin", size_threshold=1024)
    external, in_memory = tmp_path / "ext" / "c.onnx", tmp_path / "mem" / "c.onnx"
    for out, extra in ((external, ["--external-data"]), (in_memory, [])):
        out.parent.mkdir()
        assert optimize_main([str(source), str(out), "-q", "--format", "compressed", "--shape", "seq=8", *extra]) == 0
    assert len(scratches) == 1  # the external run used a scratch file, the in-memory one did not
    assert sorted(p.name for p in external.parent.iterdir()) == ["c.onnx", "c.onnx.data"]
    a, b = all_tensors(external), all_tensors(in_memory)
    assert a.keys() == b.keys()
    assert all(a[n].tobytes() == b[n].tobytes() and a[n].dtype == b[n].dtype for n in a)
    assert list(onnx.load(str(external), load_external_data=False).graph.node) == list(
        onnx.load(str(in_memory)).graph.node
    )


def compressed_weights(path) -> list[str]:
    return list(read_sparse_weights(load_model(path)))


def test_expand_streams_to_a_side_file_when_the_dense_model_would_be_too_large(models_dir, tmp_path, monkeypatch):
    # The side file is chosen from the size the model will have once expanded (the
    # compressed model itself fits), so each weight goes to it as it is expanded.
    import sparse24_onnx.modelio.load as model_io
    from sparse24_onnx.modelio.staging import StagedOutput

    compressed, embedded = tmp_path / "c.onnx", tmp_path / "e.onnx"
    args = [str(models_dir / "transformer.onnx"), str(compressed), "-q", "--format", "compressed", "--no-validate"]
    assert optimize_main(args) == 0
    assert expand_main([str(compressed), str(embedded), "-q"]) == 0
    dense_bytes = sum(a.nbytes for a in all_tensors(embedded).values())
    compressed_bytes = sum(a.nbytes for a in all_tensors(compressed).values())
    assert compressed_bytes < dense_bytes - 1000
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT_BYTES", dense_bytes - 1000)
    stored, before_save = [], []
    store, save = StagedOutput.store, StagedOutput.save
    monkeypatch.setattr(StagedOutput, "store", lambda self, t: stored.append(t.name) or store(self, t))
    monkeypatch.setattr(StagedOutput, "save", lambda self, m: before_save.extend(stored) or save(self, m))
    (tmp_path / "out").mkdir()
    streamed = tmp_path / "out" / "e.onnx"
    assert expand_main([str(compressed), str(streamed), "-q"]) == 0
    assert set(compressed_weights(compressed)) <= set(before_save)  # written while expanding, not at the end
    assert sorted(p.name for p in streamed.parent.iterdir()) == ["e.onnx", "e.onnx.data"]
    a, b = all_tensors(streamed), all_tensors(embedded)
    assert a.keys() == b.keys()
    assert all(a[n].tobytes() == b[n].tobytes() and a[n].dtype == b[n].dtype for n in a)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("{not json", "is not a JSON object"),
        ("[1, 2]", "is not a JSON object"),
        ('{"format": "compressed", "format_version": 99, "tensors": {}}', "format version 99"),
        ('{"format": "compressed", "format_version": 1, "tensors": {"fc0.weight": {"axis": 0}}}', "lacks shape"),
        ('{"format": "compressed", "format_version": 1, "tensors": []}', "no 'tensors' object"),
    ],
)
def test_damaged_format_metadata_is_bad_input(models_dir, tmp_path, capsys, damage, message):
    # Without readable metadata the weights hide behind decompression subgraphs: check must
    # not pass the model vacuously, nor expand copy it as if nothing were compressed.
    compressed, damaged = tmp_path / "c.onnx", tmp_path / "d.onnx"
    args = [str(models_dir / "mlp.onnx"), str(compressed), "-q", "--no-validate", "--format", "compressed"]
    assert optimize_main(args) == 0
    proto = onnx.load(str(compressed))
    for prop in proto.metadata_props:
        if prop.key == "sparse24":
            prop.value = damage
    onnx.save(proto, damaged)
    capsys.readouterr()
    assert check_main([str(damaged)]) == 2
    assert expand_main([str(damaged), str(tmp_path / "e.onnx")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    assert all(message in line for line in errors), errors
    assert not (tmp_path / "e.onnx").exists()


def test_invalid_position_codes_fail_check_and_expand(models_dir, tmp_path, capsys):
    # Code 0 would put both kept values in slot 0: no dense tensor matches it.
    compressed, damaged = tmp_path / "c.onnx", tmp_path / "d.onnx"
    args = [str(models_dir / "mlp.onnx"), str(compressed), "-q", "--no-validate", "--format", "compressed"]
    assert optimize_main(args) == 0
    proto = onnx.load(str(compressed))
    metadata = next(t for t in proto.graph.initializer if t.name == "fc0.weight.sparse24_metadata")
    metadata.raw_data = bytes(len(metadata.raw_data))
    onnx.save(proto, damaged)
    capsys.readouterr()
    assert check_main([str(damaged), "-q"]) == 1
    assert expand_main([str(damaged), str(tmp_path / "e.onnx")]) == 2
    assert "groups have an invalid position code" in capsys.readouterr().err
    assert not (tmp_path / "e.onnx").exists()
    with pytest.raises(ValueError, match="invalid position code"):
        decompress(read_sparse_weights(load_model(damaged))["fc0.weight"])


def test_work_per_weight_does_not_rescan_the_model(tmp_path, monkeypatch):
    # Scanning every graph for each weight made compress, check and expand quadratic in
    # the number of weights (3000 weights: check took 476 s).  The number of full scans
    # (Model.graphs) and initializer-table rebuilds must not grow with the weight count.
    import onnx_ir as ir

    calls = {"graphs": 0, "clear": 0}
    graphs, clear = ir.Model.graphs, type(ir.Graph([], [], nodes=[]).initializers).clear

    def counted_graphs(self):
        calls["graphs"] += 1
        return graphs(self)

    def counted_clear(self):
        calls["clear"] += 1
        return clear(self)

    monkeypatch.setattr(ir.Model, "graphs", counted_graphs)
    monkeypatch.setattr(type(ir.Graph([], [], nodes=[]).initializers), "clear", counted_clear)
    counts = []
    for layers in (4, 16):
        source, compressed = tmp_path / f"m{layers}.onnx", tmp_path / f"c{layers}.onnx"
        onnx.save(square_mlp(layers, 64), source)
        calls.update(graphs=0, clear=0)
        assert optimize_main([str(source), str(compressed), "-q", "--no-validate", "--format", "compressed"]) == 0
        assert check_main([str(compressed), "-q"]) == 0
        assert expand_main([str(compressed), str(tmp_path / f"e{layers}.onnx"), "-q"]) == 0
        counts.append(dict(calls))
    assert counts[0] == counts[1], counts


def test_expand_of_a_model_with_nothing_compressed_and_bad_input(models_dir, tmp_path):
    out = tmp_path / "copy.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "sparse24_onnx.expand", str(models_dir / "mlp.onnx"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0
    assert "nothing compressed" in result.stdout
    for args in (["missing.onnx", str(out)], [str(models_dir / "mlp.onnx"), str(models_dir / "mlp.onnx")]):
        result = subprocess.run([sys.executable, "-m", "sparse24_onnx.expand", *args], capture_output=True, text=True)
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1


def test_trained_model_compressed(tmp_path):
    model = packaged_file("khmersm", "khmersm/model.onnx")
    dense, compressed, report = tmp_path / "d.onnx", tmp_path / "c.onnx", tmp_path / "c.json"
    assert optimize_main([str(model), str(dense), "-q", "--no-validate"]) == 0
    args = [str(model), str(compressed), "-q", "--format", "compressed", "--shape", "seq=32", "--report", str(report)]
    assert optimize_main(args) == 0
    document = json.loads(report.read_text())
    pruned = [t for t in document["tensors"] if t["status"] == "pruned"]
    assert len(pruned) == 12  # the 192 x 2 tagger head has no Sparse Tensor Core shape (--tc-shapes strict)
    assert all(t["storage"] == "compressed" for t in pruned)
    # The pruned weights (fp32) shrink to at most 54 % of their dense bytes; the rest is unchanged.
    pruned_bytes = sum(4 * int(np.prod(t["shape"])) for t in pruned)
    saved = dense.stat().st_size - compressed.stat().st_size
    assert 1 - saved / pruned_bytes <= 0.54
    feed = {"x": np.random.default_rng(0).integers(0, 126, (1, 32)), "mask": np.ones((1, 32), bool)}
    for a, b in zip(_run(dense, feed), _run(compressed, feed), strict=True):
        assert a.tobytes() == b.tobytes()
    expanded = tmp_path / "e.onnx"
    assert expand_main([str(compressed), str(expanded), "-q"]) == 0
    a, b = all_tensors(expanded), all_tensors(dense)
    assert a.keys() == b.keys()
    assert all(a[n].tobytes() == b[n].tobytes() for n in b)


def test_dense_and_compressed_hold_no_negative_zero():
    weights = np.array([[-0.0, -0.0, -0.0, -5.0], [-1.0, -2.0, -3.0, -4.0]], np.float32)
    dense = prune_24_dense(weights, 1)
    assert not np.signbit(dense[dense == 0]).any()
    assert dense.tolist() == [[0.0, 0.0, 0.0, -5.0], [0.0, 0.0, -3.0, -4.0]]
