"""Language-model decoders: the builder, KV-cache inputs out of the box, calibration feeds without caches."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from models.decoder import DecoderConfig, save_decoder
from sparse24_onnx import check_model, prune_model
from sparse24_onnx.errors import BadInput
from sparse24_onnx.runtime.sessions import choose_providers

SMALL = {"layers": 2, "hidden": 128, "ffn": 352, "heads": 4, "kv_heads": 2, "vocab": 256}


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decoders")
    made = {}
    for cache in (True, False):
        for fp16 in (False, True):
            config = DecoderConfig(**SMALL, cache=cache, fp16=fp16)
            made[(cache, fp16)] = save_decoder(config, folder / f"d_{cache}_{fp16}.onnx")
    made["external"] = save_decoder(DecoderConfig(**SMALL), folder / "external" / "d.onnx", external_data=True)
    return made


def test_the_kv_cache_continues_the_sequence(decoders):
    session = ort.InferenceSession(str(decoders[(True, False)]), providers=["CPUExecutionProvider"])
    config = DecoderConfig(**SMALL)
    ids = np.random.default_rng(0).integers(0, config.vocab, (1, 10))
    empty = np.zeros((1, config.kv_heads, 0, config.head_dim), np.float32)
    names = [i.name for i in session.get_inputs()]
    caches = {n: empty for n in names if n.startswith("past_key_values")}
    full = session.run(None, {"input_ids": ids, "attention_mask": np.ones((1, 10), np.int64), **caches})
    first = session.run(None, {"input_ids": ids[:, :6], "attention_mask": np.ones((1, 6), np.int64), **caches})
    outputs = [o.name for o in session.get_outputs()]
    presents = {name.replace("present", "past_key_values"): v for name, v in zip(outputs[1:], first[1:], strict=True)}
    rest = session.run(None, {"input_ids": ids[:, 6:], "attention_mask": np.ones((1, 10), np.int64), **presents})
    np.testing.assert_allclose(rest[0], full[0][:, 6:], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("fp16", [False, True])
def test_decoders_validate_with_generated_inputs(decoders, tmp_path, cache, fp16):
    result = prune_model(decoders[(cache, fp16)], tmp_path / "o.onnx")  # no --shape needed
    validation = result.report["validation"]
    assert result.report["summary"]["pruned"] == 2 * 7 + 1  # q k v o gate up down per layer, lm_head
    assert validation["witnessed"]
    inputs = {entry["name"]: entry for entry in validation["inputs"]}
    assert inputs["input_ids"]["shapes"] == [[1, 16]]  # a sequence length that exercises attention
    assert inputs["input_ids"]["values"] == "integers in [0, 256)"
    assert inputs["attention_mask"]["values"] == "all ones (a mask)"
    if cache:
        past = inputs["past_key_values.0.key"]
        assert past["shapes"] == [[1, 2, 0, 32]]
        assert past["assumed"]["past_sequence_length"].startswith("0: empty key/value cache")
    assert check_model(tmp_path / "o.onnx").passed


def test_calibration_files_need_only_ids_and_mask(decoders, tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "cal").mkdir()
    for i in range(6):
        ids = rng.integers(0, 256, (1, 24))
        np.savez(tmp_path / "cal" / f"{i}.npz", input_ids=ids, attention_mask=np.ones_like(ids))
    report = tmp_path / "r.json"
    from sparse24_onnx.optimize import main

    args = [str(decoders[(True, False)]), str(tmp_path / "o.onnx"), "-q", "--method", "sparsegpt"]
    assert main([*args, "--calibration", str(tmp_path / "cal"), "--report", str(report)]) == 0
    tensors = json.loads(report.read_text())["tensors"]
    calibrated = [t for t in tensors if t["calibration"] and t["calibration"].get("samples")]
    assert len(calibrated) == 15
    assert all(t["calibration"]["samples"] == 6 * 24 for t in calibrated)


def test_a_decoder_with_external_data_calibrates_without_copying_its_weights(decoders, tmp_path, monkeypatch):
    # The capture session gets the weights as arrays; with the protobuf limit lowered to stand
    # for a model over 2 GiB, OUT goes to external data too.
    import sparse24_onnx.modelio.load as model_io

    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT_BYTES", 100_000)
    rng = np.random.default_rng(2)
    feeds = [{"input_ids": rng.integers(0, 256, (1, 16)), "attention_mask": np.ones((1, 16), np.int64)}]
    out = tmp_path / "o.onnx"
    result = prune_model(decoders["external"], out, method="wanda", calibration=feeds * 4, shapes={"batch_size": 2})
    assert result.report["summary"]["pruned"] == 15
    assert (tmp_path / "o.onnx.data").exists()


def test_execution_provider_choice():
    cpu = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(cpu) == ["CPUExecutionProvider"]
    assert choose_providers(gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(gpu, "CPUExecutionProvider") == ["CPUExecutionProvider"]
    with pytest.raises(BadInput, match="SPARSE24_PROVIDERS names CUDAExecutionProvider"):
        choose_providers(cpu, "CUDAExecutionProvider")
