"""The compressed format against the dense-pruned one: file size, session creation, run time, outputs.

    python benchmarks/bench_compressed.py

On a 4 x 2048 x 2048 fp32 MLP (and its fp16 twin), writes both formats with
``optimize --no-validate`` and prints: file sizes and their ratio; onnxruntime
session creation time (default options, fresh session each time, both formats
alternating, best and median of 9); inference time (median of 50 runs); whether
the outputs are bit-identical; and what onnxruntime printed on stderr while
loading the compressed model with its default logging.
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
        for dtype in ("float32", "float16"):
            source = folder / f"mlp_{dtype}.onnx"
            onnx.save(square_mlp(4, 2048, np.dtype(dtype)), source)
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
            feed = {"x": np.random.default_rng(0).standard_normal((1, 2048)).astype(dtype)}
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


if __name__ == "__main__":
    main()
