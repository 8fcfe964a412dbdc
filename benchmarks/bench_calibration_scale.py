"""Calibration at scale: time against onnxruntime's own forward passes, and peak memory.

    python benchmarks/bench_calibration_scale.py [--preset mlp8|decoder100m|tinyllama]
                                                 [--samples N] [--tokens N] [--method M ...]

For each preset it builds the model (``models/``; external data when large),
writes ``samples`` calibration feeds of ``tokens`` rows (decoders: only
``input_ids`` and ``attention_mask``, the KV cache left to the tool), then, each
in a fresh process with its peak resident memory:

* the floor: onnxruntime loading the model and running every calibration feed;
* ``sparse24 optimize --no-validate --method M --calibration DIR`` for each method
  (the defaults, i.e. tuned per layer; ``--no-tune`` rows too with ``--untuned``);
* for decoders, ``sparse24 optimize`` (magnitude) with validation on generated inputs.

and prints the times, their ratio to the floor, and peak RSS next to the model's size.

Presets: ``mlp8`` an MLP of 8 fp32 2048 x 2048 MatMuls (128 MiB); ``decoder100m``
a Llama-shaped fp32 decoder of ~101 M parameters (6 layers, hidden 1024, FFN 2816,
16/4 heads, vocabulary 16000); ``tinyllama`` TinyLlama-1.1B's shape in fp16 (2.2 GB,
external data).  Nothing is asserted: the script prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

FLOOR = """
import sys, glob, time, numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.log_severity_level = 4
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
specs = {i.name: i for i in session.get_inputs()}
for path in sorted(glob.glob(sys.argv[2] + "/*.npz")):
    feed = dict(np.load(path))
    for name, spec in specs.items():
        if name not in feed:  # an empty KV cache, as the tool feeds it
            dims = [d if isinstance(d, int) else 0 if "past" in str(d) else 1 for d in spec.shape]
            dtype = np.float16 if "float16" in spec.type else np.float32
            feed[name] = np.zeros(dims, dtype=dtype)
    session.run(None, feed)
"""


def timed(command: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of a command run through benchmarks/peak_rss.py."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
    info = next(json.loads(line) for line in reversed(result.stderr.splitlines()) if line.startswith("{"))
    return seconds, info["peak_rss_mib"]


def build(preset: str, folder: Path) -> tuple[Path, str, int]:
    """The model, the kind of feeds it takes (``x`` or ``tokens``) and its width or vocabulary."""
    if preset == "mlp8":
        return _mlp(folder / "mlp8.onnx", layers=8, width=2048), "x", 2048
    from models.decoder import TINYLLAMA, DecoderConfig, save_decoder

    if preset == "decoder100m":
        config = DecoderConfig(layers=6, hidden=1024, ffn=2816, heads=16, kv_heads=4, vocab=16000)
    else:
        config = DecoderConfig(**{**TINYLLAMA.__dict__, "fp16": True})
    path = save_decoder(config, folder / f"{preset}.onnx", external_data=True)
    print(f"{preset}: {config.parameters / 1e6:.0f} M parameters, {'fp16' if config.fp16 else 'fp32'}")
    return path, "tokens", config.vocab


def _mlp(path: Path, *, layers: int, width: int) -> Path:
    """``layers`` fp32 ``width x width`` MatMul + Relu layers on ``[tokens, width]``, scaled to keep unit size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) * np.sqrt(2.0 / width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"], name=f"relu{i}"))
        x = f"h{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", width])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".data")
    return path


def feeds(folder: Path, kind: str, size: int, samples: int, tokens: int) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(samples):
        if kind == "x":
            feed = {"x": rng.standard_normal((tokens, size)).astype(np.float32)}
        else:
            feed = {"input_ids": rng.integers(0, size, (1, tokens)), "attention_mask": np.ones((1, tokens), np.int64)}
        np.savez(folder / f"{i:04d}.npz", **feed)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("mlp8", "decoder100m", "tinyllama"), action="append")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--method", action="append", choices=("wanda", "sparsegpt", "admm"))
    parser.add_argument("--untuned", action="store_true", help="also time --no-tune runs")
    parser.add_argument("--validate", action="store_true", help="decoders: also magnitude optimize with validation")
    args = parser.parse_args()
    runner = [sys.executable, str(HERE / "peak_rss.py")]
    for preset in args.preset or ["mlp8"]:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", ".")) as tmp:
            folder = Path(tmp).resolve()
            model, kind, size = build(preset, folder)
            model_mib = sum(p.stat().st_size for p in folder.glob(model.name + "*")) / 2**20
            calibration = feeds(folder / "calibration", kind, size, args.samples, args.tokens)
            print(f"\n## {preset}: {model_mib:.0f} MiB on disk; {args.samples} calibration feeds of {args.tokens} rows")
            floor_script = folder / "floor.py"
            floor_script.write_text(FLOOR)
            floor, floor_rss = timed([*runner, str(floor_script), str(model), str(calibration)])
            print(f"{'run':<44} {'seconds':>8} {'x floor':>8} {'peak RSS MiB':>13}")
            print(f"{'onnxruntime: load + run the feeds (floor)':<44} {floor:>8.1f} {1:>8.2f} {floor_rss:>13.0f}")
            variants = [(m, []) for m in args.method or ["wanda", "sparsegpt"]]
            if args.untuned:
                variants += [(m, ["--no-tune"]) for m in args.method or ["wanda", "sparsegpt"]]
            for method, extra in variants:
                out = folder / f"{method}.onnx"
                command = [*runner, "sparse24_onnx", "optimize", str(model), str(out), "-q", "--no-validate"]
                command += ["--method", method, "--calibration", str(calibration), *extra]
                seconds, rss = timed(command)
                label = f"sparse24 optimize --method {method} {' '.join(extra)}".strip()
                print(f"{label:<44} {seconds:>8.1f} {seconds / floor:>8.2f} {rss:>13.0f}")
                for path in folder.glob(out.name + "*"):
                    path.unlink()
            if args.validate and kind == "tokens":
                out = folder / "magnitude.onnx"
                seconds, rss = timed([*runner, "sparse24_onnx", "optimize", str(model), str(out), "-q"])
                print(f"{'sparse24 optimize (magnitude, validated)':<44} {seconds:>8.1f} {'':>8} {rss:>13.0f}")


if __name__ == "__main__":
    main()
