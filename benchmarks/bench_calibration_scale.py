"""How long calibration takes on a model of ~100 M weights with 128 calibration samples.

    python benchmarks/bench_calibration_scale.py [--layers 24] [--width 2048] [--tokens 128] [--samples 128]

Builds an MLP of ``layers`` fp32 ``width x width`` MatMul weights (24 x 2048 x 2048 is
100.7 M weights), writes ``samples`` calibration feeds of ``tokens`` rows each, and
times ``optimize --no-validate`` with ``--method wanda`` and ``--method sparsegpt``
(process start to saved file), printing the times and peak memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp).resolve()
        inits, nodes, x = [], [], "x"
        for i in range(args.layers):
            w = (rng.standard_normal((args.width, args.width), dtype=np.float32) / np.sqrt(args.width)).astype(
                np.float32
            )
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
            nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"], name=f"relu{i}"))
            x = f"h{i}"
        nodes[-1].output[0] = "y"
        graph = helper.make_graph(
            nodes, "mlp",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", args.width])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", args.width])], inits,
        )  # fmt: skip
        model = folder / "mlp.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model,
                  save_as_external_data=True, location="mlp.onnx.data")  # fmt: skip
        calibration = folder / "calibration"
        calibration.mkdir()
        for i in range(args.samples):
            np.savez(calibration / f"{i:04d}.npz", x=rng.standard_normal((args.tokens, args.width)).astype(np.float32))
        weights = args.layers * args.width * args.width
        print(f"{args.layers} x {args.width} x {args.width} fp32 = {weights / 1e6:.1f} M weights; "
              f"{args.samples} calibration samples of {args.tokens} rows")  # fmt: skip
        for method in ("wanda", "sparsegpt"):
            start = time.perf_counter()
            result = subprocess.run(
                [sys.executable, str(HERE / "peak_rss.py"), "sparse24_onnx.optimize", str(model),
                 str(folder / f"{method}.onnx"), "--no-validate", "-q", "--method", method,
                 "--calibration", str(calibration)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            peak = json.loads(result.stderr.strip().splitlines()[-1])["peak_rss_mib"]
            print(f"{method:<10} {seconds:7.1f} s   peak RSS {peak / 1024:.1f} GiB")


if __name__ == "__main__":
    main()
