"""The GPU benchmark harness, as far as it runs without a GPU: arguments, model preparation, parsing, report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from sparse24_onnx.core import is_24
from sparse24_onnx.gpu.harness import (
    Layer,
    LayerResult,
    Timing,
    TorchReport,
    eligibility,
    format_torch_report,
    parse_sparsity_log,
    prepare_for_tensorrt,
    sparse_layers,
    sparse_tactics,
    to_fp16_model,
)
from sparse24_onnx.optimize import main as optimize_main

from .helpers import all_tensors

TRT_LOG = """\
[11/26/2026-10:00:00] [TRT] [I] (Sparsity) Layers eligible for sparse math: /ffn/up/MatMul, /ffn/down/MatMul, /c1/Conv
[11/26/2026-10:00:01] [TRT] [V] Tactic: 0x0000000000000 Time: 0.1
[11/26/2026-10:00:02] [TRT] [I] (Sparsity) TRT inference plan picked sparse implementation for layers: /ffn/down/MatMul
"""


def test_parse_sparsity_log():
    found = parse_sparsity_log(TRT_LOG.splitlines())
    assert found == {"eligible": ["/ffn/up/MatMul", "/ffn/down/MatMul", "/c1/Conv"], "picked": ["/ffn/down/MatMul"]}
    assert parse_sparsity_log(["nothing here"]) == {"eligible": [], "picked": []}


def test_sparse_tactics_from_inspector_json():
    detail = json.dumps(
        {
            "Layers": [
                {"Name": "/ffn/up/MatMul", "TacticName": "sm90_xmma_gemm_f16f16_f16f32_sparse_128x128"},
                {"Name": "/ffn/act", "TacticName": "PointWiseV2"},
                "a layer described only by a string",
            ]
        }
    )
    assert sparse_tactics(detail) == ["/ffn/up/MatMul"]
    assert sparse_tactics("not json") == []


def test_sparse_layers_of_dense_and_compressed_models(models_dir, tmp_path):
    dense, compressed = tmp_path / "d.onnx", tmp_path / "c.onnx"
    source = str(models_dir / "transformer.onnx")
    assert optimize_main([source, str(dense), "-q", "--no-validate"]) == 0
    assert optimize_main([source, str(compressed), "-q", "--no-validate", "--format", "compressed"]) == 0
    for path in (dense, compressed):
        layers = {layer.name: layer.weight for layer in sparse_layers(path)}
        assert set(layers) == {f"attn.{p}.weight" for p in "qkvo"} | {"ffn.up.weight", "ffn.down.weight"}
        assert layers["ffn.up.weight"].shape == (256, 64)  # (out_features, K): the MatMul B [64, 256] transposed
        for weight in layers.values():
            assert is_24(weight, 1)
    assert sparse_layers(models_dir / "transformer.onnx") == []  # nothing pruned yet


def test_eligibility_rules():
    assert eligibility(Layer("a", "MatMul", np.zeros((4096, 16384))), 2048) == ""
    assert "rows % 32" in eligibility(Layer("b", "MatMul", np.zeros((48, 64))), 2048)
    assert "K % 64" in eligibility(Layer("c", "MatMul", np.zeros((64, 96))), 2048)
    assert "multiple of 8" in eligibility(Layer("d", "MatMul", np.zeros((64, 64))), 100)


def test_fp16_conversion_runs_in_onnxruntime(models_dir, tmp_path):
    out = tmp_path / "fp16.onnx"
    to_fp16_model(models_dir / "gemm.onnx", out)
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    reference = ort.InferenceSession(str(models_dir / "gemm.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    half = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x.astype(np.float16)})
    assert half[0].dtype == np.float16
    np.testing.assert_allclose(half[0].astype(np.float32), reference[0], rtol=2e-2, atol=2e-2)


def test_prepare_for_tensorrt_expands_compressed_models(models_dir, tmp_path):
    dense, compressed = tmp_path / "d.onnx", tmp_path / "c.onnx"
    source = str(models_dir / "mlp.onnx")
    assert optimize_main([source, str(dense), "-q", "--no-validate"]) == 0
    assert optimize_main([source, str(compressed), "-q", "--no-validate", "--format", "compressed"]) == 0
    (tmp_path / "work").mkdir()
    prepared = prepare_for_tensorrt(compressed, tmp_path / "work", "fp32")
    assert prepared != compressed
    a, b = all_tensors(prepared), all_tensors(dense)
    assert a.keys() == b.keys()
    assert all(a[n].tobytes() == b[n].tobytes() for n in b)
    assert prepare_for_tensorrt(dense, tmp_path / "work", "fp32") == dense  # nothing to do


def test_report_format_and_time_weighted_total():
    report = TorchReport("NVIDIA H100", {"torch": "2.x"}, 2048)
    report.layers = [
        LayerResult("big", [16384, 4096], "float16", Timing(2.0, 2.1, 100), Timing(1.25, 1.3, 100), 1e-3),
        LayerResult("small", [64, 64], "float16", Timing(0.010, 0.011, 100), Timing(0.010, 0.012, 100), 0.0),
        LayerResult("odd", [48, 64], "float16", skip="shape 48x64: ..."),
    ]
    assert report.layers[0].speedup == pytest.approx(1.6)
    assert report.totals() == {"float16": pytest.approx(2.010 / 1.260)}
    text = format_torch_report(report)
    assert "1.60x" in text
    assert "too small to gain" in text.splitlines()[4]
    assert "shape 48x64" in text
    assert "time-weighted total speedup (float16): 1.60x" in text


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--backend", "torch"], 3, "PyTorch"),
        (["--backend", "tensorrt"], 3, "TensorRT"),
        (["--tokens", "0"], 2, "--tokens"),
        (["--backend", "cuda"], 2, "invalid choice"),
    ],
)
def test_missing_runtimes_and_bad_arguments(models_dir, tmp_path, args, code, message):
    try:
        import torch

        if torch.cuda.is_available() and code == 3 and "PyTorch" in message:
            pytest.skip("this machine has a CUDA GPU and PyTorch")
    except ImportError:
        pass
    pruned = tmp_path / "p.onnx"
    assert optimize_main([str(models_dir / "transformer.onnx"), str(pruned), "-q", "--no-validate"]) == 0
    result = subprocess.run(
        [sys.executable, "-m", "sparse24_onnx.bench", str(pruned), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == code, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr


def test_gpu_models_script_builds_and_prunes_small_versions(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_models.py", str(tmp_path), "--hidden", "64", "--ffn", "256"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    paths = result.stdout.split()
    assert [p.rsplit("/", 1)[1] for p in paths] == ["ffn.sparse.onnx", "small.sparse.onnx"]
    layers = {layer.name: layer.weight.shape for layer in sparse_layers(paths[0])}
    assert layers == {"ffn.up.weight": (256, 64), "ffn.down.weight": (64, 256)}
