"""Which graph IR serves large models better: onnx-ir or onnx-graphsurgeon?

Builds an MLP whose fp32 weights live in external data (``--gib`` in total), then,
each in a fresh process, loads it with each IR, reads every weight as a NumPy
array, prunes it to 2:4, and saves the result with external data.  Prints the
wall time and the peak resident memory of each process, and which parts of the
model each IR's round trip keeps (metadata_props, value_info, doc strings,
local functions).

    pip install -e '.[bench]'
    python benchmarks/ir_choice.py --gib 1
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build(folder: Path, gib: float) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side = 4096
    layers = max(1, round(gib * 2**30 / (side * side * 4)))
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    x = "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array(rng.standard_normal((side, side), dtype=np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"mm{i}", doc_string=f"layer {i}"))
        x = f"h{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side])],
        inits,
        value_info=[helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, side])],
    )
    function = helper.make_function(
        "local", "Unused", ["X"], ["Y"], [helper.make_node("Relu", ["X"], ["Y"])], [helper.make_opsetid("", 17)]
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
        functions=[function],
    )
    helper.set_model_props(model, {"owner": "benchmark"})
    path = folder / "big.onnx"
    onnx.save(model, path, save_as_external_data=True, location="big.onnx.data")
    return path


def run_onnx_ir(src: str, dst: str) -> None:
    import onnx_ir as ir

    from sparse24_onnx.core import decompress, prune_24_magnitude

    model = ir.load(src)  # external tensors are memory-mapped, not read
    for value in model.graph.initializers.values():
        tensor = value.const_value

        def pruned(tensor=tensor):
            result = ir.Tensor(decompress(prune_24_magnitude(tensor.numpy(), 0)), name=tensor.name)
            tensor.release()  # unmap the source weight once it is pruned
            return result

        # Pruned while saving, one tensor at a time: memory holds one weight, not the model.
        value.const_value = ir.LazyTensor(pruned, dtype=tensor.dtype, shape=tensor.shape, name=tensor.name)
    ir.save(model, dst, external_data=Path(dst).name + ".data")


def run_graphsurgeon(src: str, dst: str) -> None:
    import onnx
    import onnx_graphsurgeon as gs

    from sparse24_onnx.core import decompress, prune_24_magnitude

    graph = gs.import_onnx(onnx.load(src))
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            tensor.values = decompress(prune_24_magnitude(tensor.values, 0))
    onnx.save(gs.export_onnx(graph), dst, save_as_external_data=True, location=Path(dst).name + ".data")


def kept_parts(src: str, dst: str) -> dict[str, bool]:
    import onnx

    a, b = onnx.load(src, load_external_data=False), onnx.load(dst, load_external_data=False)
    return {
        "metadata_props": list(a.metadata_props) == list(b.metadata_props),
        "value_info": list(a.graph.value_info) == list(b.graph.value_info),
        "node doc strings": [n.doc_string for n in a.graph.node] == [n.doc_string for n in b.graph.node],
        "local functions": list(a.functions) == list(b.functions),
    }


def peak_rss_gib() -> float:
    """This process's peak resident set (VmHWM), which unlike ru_maxrss is not inherited from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # KiB -> GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(which: str, src: str, dst: str) -> None:
    start = time.perf_counter()
    {"onnx-ir": run_onnx_ir, "onnx-graphsurgeon": run_graphsurgeon}[which](src, dst)
    seconds = time.perf_counter() - start
    peak = peak_rss_gib()
    print(json.dumps({"seconds": seconds, "peak_gib": peak, "kept": kept_parts(src, dst)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="total weight size (default 1 GiB)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        src = build(Path(tmp), args.gib)
        weights = (src.parent / "big.onnx.data").stat().st_size / 2**30
        print(f"model: {src.name} with {weights:.2f} GiB of fp32 weights in external data")
        print(f"{'IR':<18} {'seconds':>8} {'peak RSS GiB':>13}  kept on round trip")
        for which in ("onnx-ir", "onnx-graphsurgeon"):
            dst = Path(tmp) / f"out-{which}.onnx"
            out = subprocess.run(
                [sys.executable, __file__, "--child", which, str(src), str(dst)],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            kept = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in result["kept"].items())
            print(f"{which:<18} {result['seconds']:>8.2f} {result['peak_gib']:>13.2f}  {kept}")


if __name__ == "__main__":
    main()
