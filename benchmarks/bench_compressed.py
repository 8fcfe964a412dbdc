"""The compressed format against the dense-pruned one: file size, session creation, run time, outputs.

    python benchmarks/bench_compressed.py

On a 4 x 2048 x 2048 fp32 MLP (its fp16 twin, and an int8 one whose weights go through
DequantizeLinear with symmetric per-channel scales), writes both formats with
``optimize --no-validate`` and prints: file sizes and their ratio; onnxruntime
session creation time (default options, fresh session each time, both formats
alternating, best and median of 9, in one process; and median of 5, each in a new
process); inference time (median of 50 runs); whether
the outputs are bit-identical; and what onnxruntime printed on stderr while
loading the compressed model with its default logging.  Last, what onnxruntime's
constant folding costs per folded node with a 16 MiB output (a chain of Mul nodes on
each weight of the dense MLP), the unit the decompression subgraph is paid in.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from models.build_models import square_mlp


def session_times(paths: list[Path], repeat: int) -> dict[Path, list[float]]:
    import onnxruntime as ort

    times: dict[Path, list[float]] = {p: [] for p in paths}
    for _ in range(repeat):
        for path in paths:
            start = time.perf_counter()
            ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            times[path].append(time.perf_counter() - start)
    return times


def fresh_process_times(paths: list[Path], repeat: int) -> dict[Path, list[float]]:
    """Session creation in a new interpreter each time, as a program that loads one model sees it.

    Only the ``InferenceSession`` call is timed (not the interpreter or the import); it
    includes onnxruntime's once-per-process set-up, which the in-process figures leave out.
    """
    code = (
        "import sys, time, onnxruntime as ort; start = time.perf_counter(); "
        "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider']); print(time.perf_counter() - start)"
    )
    times: dict[Path, list[float]] = {p: [] for p in paths}
    for _ in range(repeat):
        for path in paths:
            result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
            times[path].append(float(result.stdout))
    return times


def chained_mlp(muls: int):
    """The 4 x 2048 x 2048 fp32 MLP with each weight passed through ``muls`` Mul-by-1.5 nodes.

    onnxruntime folds those at session creation: the cost of folding one elementwise
    node with a 16 MiB output, the cheapest thing a decompression subgraph can do.
    """
    from onnx import helper

    model = square_mlp(4, 2048, np.float32)
    graph = model.graph
    if muls:
        graph.initializer.append(helper.make_tensor("scale", 1, [], [1.5]))
    chains = []
    for node in graph.node:
        source = node.input[1]
        for i in range(muls):
            chains.append(helper.make_node("Mul", [source, "scale"], [f"{node.input[1]}_x{i}"]))
            source = chains[-1].output[0]
        node.input[1] = source
    nodes = chains + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def fold_cost(folder: Path) -> None:
    """Print the session-creation cost of folding one 16 MiB elementwise node (in-process)."""
    import onnx

    paths = []
    for muls in (0, 4):
        paths.append(folder / f"chained_{muls}.onnx")
        onnx.save(chained_mlp(muls), paths[-1])
    times = session_times(paths, 9)
    plain, chained = (statistics.median(times[p]) for p in paths)
    print(
        f"\n## what one folded node costs: 4 x 2048 x 2048 fp32 MLP, each weight through 4 Mul nodes: "
        f"session creation median {plain * 1000:.0f} -> {chained * 1000:.0f} ms, "
        f"{(chained - plain) / 16 * 1000:.1f} ms per folded 16 MiB Mul"
    )


def int8_mlp(layers: int = 4, side: int = 2048):
    """``square_mlp``'s weights quantized to int8 per output channel (zero points 0), through DequantizeLinear."""
    from onnx import helper, numpy_helper

    model = square_mlp(layers, side)
    nodes, inits = [], []
    for tensor in model.graph.initializer:
        w = numpy_helper.to_array(tensor)
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        inits += [numpy_helper.from_array(q, tensor.name + ".q"), numpy_helper.from_array(scale, tensor.name + ".s")]
        nodes.append(
            helper.make_node("DequantizeLinear", [tensor.name + ".q", tensor.name + ".s"], [tensor.name], axis=1)
        )
    nodes += list(model.graph.node)
    graph = helper.make_graph(nodes, "int8_mlp", list(model.graph.input), list(model.graph.output), inits)
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    built.ir_version = 8
    return built


def run_times(path: Path, feed: dict, repeat: int) -> tuple[float, list[np.ndarray]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, feed)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times), outputs


def main() -> None:
    import onnx

    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp).resolve()
        for dtype in ("float32", "float16", "int8"):
            source = folder / f"mlp_{dtype}.onnx"
            onnx.save(int8_mlp() if dtype == "int8" else square_mlp(4, 2048, np.dtype(dtype)), source)
            dense, compressed = folder / f"dense_{dtype}.onnx", folder / f"compressed_{dtype}.onnx"
            for out, extra in ((dense, []), (compressed, ["--format", "compressed"])):
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "sparse24_onnx.optimize",
                        str(source),
                        str(out),
                        "--no-validate",
                        "-q",
                        *extra,
                    ],
                    check=True,
                )
            size_d, size_c = dense.stat().st_size, compressed.stat().st_size
            print(f"\n## 4 x 2048 x 2048 {dtype} MLP")
            print(
                f"file size: dense {size_d / 2**20:.2f} MiB, compressed {size_c / 2**20:.2f} MiB, "
                f"ratio {size_c / size_d:.4f}"
            )
            times = session_times([dense, compressed], 9)
            best_d, best_c = min(times[dense]), min(times[compressed])
            med_d, med_c = statistics.median(times[dense]), statistics.median(times[compressed])
            print(
                f"session creation: dense best {best_d * 1000:.0f} ms / median {med_d * 1000:.0f} ms, "
                f"compressed best {best_c * 1000:.0f} ms / median {med_c * 1000:.0f} ms, "
                f"ratio best {best_c / best_d:.2f} / median {med_c / med_d:.2f}"
            )
            fresh = fresh_process_times([dense, compressed], 5)
            fresh_d, fresh_c = statistics.median(fresh[dense]), statistics.median(fresh[compressed])
            print(
                f"session creation in a fresh process (median of 5): dense {fresh_d * 1000:.0f} ms, "
                f"compressed {fresh_c * 1000:.0f} ms, ratio {fresh_c / fresh_d:.2f}"
            )
            input_type = "float32" if dtype == "int8" else dtype
            feed = {"x": np.random.default_rng(0).standard_normal((1, 2048)).astype(input_type)}
            run_d, out_d = run_times(dense, feed, 50)
            run_c, out_c = run_times(compressed, feed, 50)
            same = all(a.tobytes() == b.tobytes() for a, b in zip(out_d, out_c, strict=True))
            print(
                f"inference median: dense {run_d * 1000:.2f} ms, compressed {run_c * 1000:.2f} ms; "
                f"outputs bit-identical: {same}"
            )
            code = f"import onnxruntime as ort; ort.InferenceSession({str(compressed)!r})"
            stderr = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stderr
            print(f"onnxruntime stderr while loading the compressed model: {stderr.strip() or '(nothing)'}")
        fold_cost(folder)


if __name__ == "__main__":
    main()
