"""Build and prune the models the GPU check times: transformer-sized FFN layers and a small model.

    python benchmarks/gpu_models.py OUT_FOLDER [--hidden 4096] [--ffn 16384]

Writes ``ffn.onnx`` (one FFN block: hidden -> ffn -> hidden, fp32) and ``small.onnx``
(the 64-wide MLP from models/), prunes each with ``sparse24_onnx.optimize`` (magnitude,
external data for the large one), and prints the paths of the pruned models.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.build_models import mlp


def ffn(hidden: int, width: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    up = (rng.standard_normal((hidden, width), dtype=np.float32) / np.sqrt(hidden)).astype(np.float32)
    down = (rng.standard_normal((width, hidden), dtype=np.float32) / np.sqrt(width)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "ffn.up.weight"], ["h"], name="/ffn/up/MatMul"),
            helper.make_node("Relu", ["h"], ["a"], name="/ffn/act"),
            helper.make_node("MatMul", ["a", "ffn.down.weight"], ["y"], name="/ffn/down/MatMul"),
        ],
        "ffn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", hidden])],
        [numpy_helper.from_array(up, "ffn.up.weight"), numpy_helper.from_array(down, "ffn.down.weight")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--ffn", type=int, default=16384)
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    big = args.folder / "ffn.onnx"
    onnx.save(ffn(args.hidden, args.ffn), big, save_as_external_data=True, location="ffn.onnx.data")
    small = args.folder / "small.onnx"
    onnx.save(mlp(), small)
    for source in (big, small):
        out = source.with_name(source.stem + ".sparse.onnx")
        subprocess.run(
            [sys.executable, "-m", "sparse24_onnx.optimize", str(source), str(out), "--no-validate", "-q",
             "--external-data", "--tc-shapes", "off"],
            check=True,
        )  # fmt: skip
        print(out)


if __name__ == "__main__":
    main()
