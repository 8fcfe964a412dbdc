"""Speed and memory of sparse24-onnx, with the peer (polygraphy 0.53) measured in the same run.

    pip install -e '.[dev,bench]'  # the peer: polygraphy and the onnx-graphsurgeon its surgeon needs
    python benchmarks/bench_speed.py [--scale-gib 1 2 3] [--skip-peer-e2e]

Prints six tables:

0. start-up: the import time of each dependency and of the tool's own entry
   points, each in a fresh process (best of 5), and ``sparse24 --help``, so
   that a regression from a dependency release shows;
1. core: weights/s of magnitude pruning on one core, mask + apply
   (``prune_24_dense``) and prune + compress (``prune_24``), several sizes,
   dtypes and both axes;
1b. quantized weights (int8, float8 e4m3fn): the whole path ``optimize`` takes
   (dequantize, mask by the real magnitude, write the zero point);
2. per tensor against ``polygraphy.tools.sparse.process_tensor`` on the same
   TensorProtos (conversion to and from NumPy included on both sides);
3. end to end, process start to saved file: ``sparse24 optimize --no-validate``
   against ``polygraphy surgeon prune`` on 4 x 1024 x 1024 and 4 x 2048 x 2048
   fp32 MLPs (``--e2e-side``);
4. scale: external-data MLPs of several GiB, ``optimize --no-validate
   --external-data`` against ``cp`` of the same files, with peak resident memory;
   and once with ``--format compressed``.

Nothing here is asserted: the script prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from models.build_models import square_mlp  # noqa: E402


def best_of(function, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def core_table() -> None:
    import ml_dtypes

    from sparse24_onnx.core import prune_24, prune_24_dense

    print("\n## 1. core, one process, one core (best of 5)")
    print(f"{'shape':>12} {'dtype':>8} {'axis':>4} {'mask+apply M/s':>15} {'GB/s':>6} {'prune+compress M/s':>19}")
    rng = np.random.default_rng(0)
    # 2-D: a MatMul B [K, N] (axis 0) and a Gemm transB=1 weight [N, K] (axis 1); 4-D: a 3x3 Conv.
    for shape in ((1024, 1024), (4096, 4096), (8192, 8192), (512, 512, 3, 3)):
        base = rng.standard_normal(shape, dtype=np.float32)
        for dtype in (np.float32, np.float16, ml_dtypes.bfloat16):
            weights = base.astype(dtype)
            for axis in (0, 1) if len(shape) == 2 else (1,):
                dense = best_of(lambda w=weights, a=axis: prune_24_dense(w, a), 5)
                compressed = best_of(lambda w=weights, a=axis: prune_24(w, None, a), 5)
                rate = weights.size / dense
                print(
                    f"{'x'.join(map(str, shape)):>12} {np.dtype(dtype).name:>8} {axis:>4} {rate / 1e6:>15.0f} "
                    f"{rate * weights.itemsize / 1e9:>6.2f} {weights.size / compressed / 1e6:>19.0f}"
                )


def quantized_table() -> None:
    """Quantized weights as ``optimize`` prunes them: dequantize, mask by the real magnitude, requantize."""
    import ml_dtypes

    from sparse24_onnx.core import prune_24_dense
    from sparse24_onnx.core.quantized import QuantGrid
    from sparse24_onnx.passes.prune_weights import requantize

    print("\n## 1b. quantized weights, whole path: dequantize + prune by real magnitude + requantize (best of 5)")
    print(f"{'shape':>12} {'stored':>13} {'scales':>11} {'axis':>4} {'M weights/s':>12} {'stored GB/s':>12}")
    rng = np.random.default_rng(0)
    for shape in ((4096, 4096), (8192, 8192)):
        real = rng.standard_normal(shape, dtype=np.float32)
        for stored_type, limit in ((np.int8, 127), (ml_dtypes.float8_e4m3fn, 448)):
            for axis in (0, 1):
                # Per-channel scales along the output axis (the other one), zero points 0.
                keep = [1, 1]
                keep[1 - axis] = shape[1 - axis]
                scale = (np.abs(real).max(axis=axis, keepdims=True) / limit).astype(np.float32).reshape(keep)
                grid = QuantGrid(np.dtype(stored_type), scale, np.zeros((1, 1), stored_type))
                stored = grid.quantize(real)

                def run(q=stored, g=grid, a=axis):
                    values = g.dequantize(q)
                    return requantize(g, q, prune_24_dense(values, a), values_kept=True)

                seconds = best_of(run, 5)
                print(
                    f"{'x'.join(map(str, shape)):>12} {np.dtype(stored_type).name:>13} {'per-channel':>11} "
                    f"{axis:>4} {stored.size / seconds / 1e6:>12.0f} {stored.nbytes / seconds / 1e9:>12.2f}"
                )


def per_tensor_table() -> None:
    from onnx import numpy_helper
    from polygraphy.tools.sparse import PruneInfo, process_tensor

    from sparse24_onnx.core import prune_24_dense

    print("\n## 2. per tensor, the same TensorProto, against polygraphy's process_tensor")
    print(f"{'shape':>12} {'axis':>4} {'polygraphy s':>13} {'sparse24 s':>11} {'ratio':>8} {'same zeros':>10}")
    rng = np.random.default_rng(1)
    for shape, axis in (((1024, 1024), 0), ((1024, 1024), 1), ((2048, 2048), 0)):
        proto = numpy_helper.from_array(rng.standard_normal(shape, dtype=np.float32), "w")

        def ours(proto=proto, axis=axis):
            return numpy_helper.from_array(prune_24_dense(numpy_helper.to_array(proto), axis), "w")

        start = time.perf_counter()
        theirs_result = process_tensor(PruneInfo("w", axis), proto, False)
        theirs = time.perf_counter() - start
        ours_time = best_of(ours, 3)
        same = np.array_equal(numpy_helper.to_array(theirs_result) == 0, numpy_helper.to_array(ours()) == 0)
        print(
            f"{'x'.join(map(str, shape)):>12} {axis:>4} {theirs:>13.2f} {ours_time:>11.4f} "
            f"{theirs / ours_time:>7.0f}x {'yes' if same else 'no':>10}"
        )


def build_mlp(path: Path, layers: int, side: int, external: bool) -> None:
    """Save ``models.build_models.square_mlp`` (fp32), with its weights in a side file if ``external``."""
    import onnx

    model = square_mlp(layers, side)
    if external:
        onnx.save(model, path, save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save(model, path)


# Commands run as on a user's machine: Python caches bytecode (pip compiles what it
# installs, and an editable install writes its caches on the first run), so a
# PYTHONDONTWRITEBYTECODE inherited from the shell is dropped.
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed_run(command: list[str], cwd: Path) -> tuple[float, dict]:
    """Wall time of a command; dirty pages are flushed first so that earlier writes do not slow it."""
    os.sync()
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=USER_ENV)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
    info = {}
    for line in result.stderr.splitlines():
        if line.startswith("{") and "peak_rss_mib" in line:
            info = json.loads(line)
    return seconds, info


#: (label, statement) pairs timed by the start-up table, each in a fresh interpreter.
IMPORTS = (
    ("python (empty)", "pass"),
    ("numpy", "import numpy"),
    ("ml_dtypes", "import ml_dtypes"),
    ("onnx", "import onnx"),
    ("onnx_ir (sympy deferred)", "import sparse24_onnx, onnx_ir"),
    ("onnx_ir (as is)", "import onnx_ir"),
    ("onnxruntime", "import onnxruntime"),
    ("sparse24 --help (cli only)", "import sparse24_onnx.cli"),
    ("sparse24_onnx.pipeline.prune", "import sparse24_onnx.pipeline.prune"),
)


def _import_seconds(statement: str, repeat: int = 5) -> float:
    """Best wall time of ``statement`` in a fresh interpreter, timed inside it (start-up excluded)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeat):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=USER_ENV)
        if result.returncode != 0:
            return float("nan")
        times.append(float(result.stdout.split()[-1]))
    return min(times)


def startup_table() -> None:
    import importlib.metadata as metadata

    print("\n## 0. start-up: import times in a fresh interpreter (best of 5, seconds)")
    for package in ("numpy", "ml_dtypes", "onnx", "onnx-ir", "onnxruntime", "sympy"):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "not installed"
        print(f"{package:>12}: {version}")
    for label, statement in IMPORTS:
        print(f"{label:>30} {_import_seconds(statement):8.3f}")
    script = _console_script()
    best = min(timed_run([*script, "--help"], Path("."))[0] for _ in range(5))
    print(f"{'sparse24 --help (process)':>30} {best:8.3f}")


def _console_script() -> list[str]:
    found = shutil.which("sparse24") or str(Path(sys.executable).with_name("sparse24"))
    return [found] if Path(found).exists() else [sys.executable, "-m", "sparse24_onnx"]


def e2e_table(folder: Path, skip_peer: bool, sides: list[int]) -> None:
    polygraphy = shutil.which("polygraphy") or str(Path(sys.executable).with_name("polygraphy"))
    script = _console_script()
    for side in sides:
        mib = 4 * side * side * 4 / 2**20
        print(f"\n## 3. end to end, process start to saved file, 4 x {side} x {side} fp32 MLP ({mib:.0f} MiB)")
        model = folder / f"mlp{side}.onnx"
        build_mlp(model, 4, side, external=False)
        command = [*script, "optimize", model.name, "ours.onnx", "--no-validate", "-q"]
        timed_run(command, folder)  # untimed: writes the bytecode caches of an editable install
        ours = min(timed_run(command, folder)[0] for _ in range(3))
        print(f"{' '.join(command[-5:-3]):<36}: {ours:8.2f} s (best of 3; {' '.join(Path(c).name for c in script)})")
        if skip_peer:
            print("polygraphy surgeon prune            : skipped (--skip-peer-e2e)")
            continue
        theirs, _ = timed_run([polygraphy, "surgeon", "prune", model.name, "-o", "theirs.onnx"], folder)
        print(f"polygraphy surgeon prune            : {theirs:8.2f} s")
        print(f"ratio                               : {theirs / ours:8.1f}x")


def scale_table(folder: Path, sizes: list[float]) -> None:
    print("\n## 4. scale: external data, optimize --no-validate --external-data against cp of the same files")
    print("(best of 2 each, alternating; dirty pages flushed before every run)")
    print("and, run once, --format compressed (the last two columns)")
    print(
        f"{'weights GiB':>11} {'cp s':>7} {'optimize s':>10} {'ratio':>6} {'GiB/s':>6} {'peak RSS MiB':>12}"
        f" {'compressed s':>12} {'its peak RSS MiB':>16}"
    )
    side = 8192  # 256 MiB per fp32 layer
    for gib in sizes:
        layers = max(1, round(gib * 4))
        sub = folder / f"scale{gib}"
        sub.mkdir()
        build_mlp(sub / "big.onnx", layers, side, external=True)
        size = (sub / "big.onnx.data").stat().st_size + (sub / "big.onnx").stat().st_size
        subprocess.run(["cat", "big.onnx.data"], cwd=sub, stdout=subprocess.DEVNULL, check=True)  # warm cache
        copies, ours, peaks = [], [], []
        for _ in range(2):
            copies.append(timed_run(["cp", "big.onnx", "big.onnx.data", str(folder / "copy")], sub)[0])
            seconds, info = timed_run(
                [
                    sys.executable,
                    str(HERE / "peak_rss.py"),
                    "sparse24_onnx.optimize",
                    "big.onnx",
                    "out.onnx",
                    "--no-validate",
                    "--external-data",
                    "-q",
                ],
                sub,
            )
            ours.append(seconds)
            peaks.append(info.get("peak_rss_mib", float("nan")))
            for name in ("out.onnx", "out.onnx.data"):
                (sub / name).unlink(missing_ok=True)
        command = [sys.executable, str(HERE / "peak_rss.py"), "sparse24_onnx.optimize", "big.onnx", "out.onnx"]
        compressed, info = timed_run(
            [*command, "--no-validate", "--external-data", "--format", "compressed", "-q"], sub
        )
        copy, mine = min(copies), min(ours)
        print(
            f"{size / 2**30:>11.2f} {copy:>7.2f} {mine:>10.2f} {mine / copy:>6.1f} "
            f"{size / 2**30 / mine:>6.2f} {max(peaks):>12.0f} {compressed:>12.2f} {info.get('peak_rss_mib', 0):>16.0f}"
        )
        shutil.rmtree(sub)
        for name in ("big.onnx", "big.onnx.data"):
            (folder / "copy" / name).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale-gib", type=float, nargs="*", default=[1.0, 2.0, 3.0])
    parser.add_argument("--skip-peer-e2e", action="store_true", help="skip the ~35 s polygraphy end-to-end run")
    parser.add_argument("--e2e-side", type=int, nargs="*", default=[1024, 2048], help="MLP sides for table 3")
    parser.add_argument("--only", choices=["startup", "core", "tensor", "e2e", "scale"], action="append")
    args = parser.parse_args()
    import importlib.util

    missing = [m for m in ("polygraphy", "onnx_graphsurgeon") if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(f"bench_speed: the peer needs {', '.join(missing)}: pip install -e '.[bench]'")
    import onnx
    import onnx_ir
    import polygraphy

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, onnx {onnx.__version__}, onnx-ir {onnx_ir.__version__}, "
        f"polygraphy {polygraphy.__version__}"
    )
    only = set(args.only or ["startup", "core", "tensor", "e2e", "scale"])
    if "startup" in only:
        startup_table()
    if "core" in only:
        core_table()
        quantized_table()
    if "tensor" in only:
        per_tensor_table()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp).resolve()
        (folder / "copy").mkdir()
        if "e2e" in only:
            e2e_table(folder, args.skip_peer_e2e, args.e2e_side)
        if "scale" in only and args.scale_gib:
            scale_table(folder, args.scale_gib)


if __name__ == "__main__":
    main()
