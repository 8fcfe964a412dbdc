"""Magnitude, Wanda and SparseGPT on a trained transformer: held-out error and task agreement.

    pip install --no-deps khmersm==1.4.2        # a Khmer word segmenter (transformer + CRF tags)
    python benchmarks/bench_calibration.py

Builds feeds from the Khmer sentences in ``benchmarks/data/khmer_sentences.txt``
(one sentence per feed, encoded with the model's own character table): the first
32 are the calibration set, the other 16 the held-out set.  For each method it
runs ``optimize`` (validation on the held-out set) and prints the held-out relative
L2 error of the emissions, the share of characters whose segmentation tag
(argmax of the emissions) is unchanged, and the time the run took.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def package_file(distribution: str, suffix: str) -> Path:
    dist = importlib.metadata.distribution(distribution)
    return next(Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(suffix))


def write_feeds(folder: Path, sentences: list[str], char2id: dict[str, int]) -> list[dict[str, np.ndarray]]:
    folder.mkdir(parents=True)
    feeds = []
    for i, sentence in enumerate(sentences):
        ids = np.array([[char2id.get(ch, char2id.get("<unk>", 1)) for ch in sentence]], dtype=np.int64)
        feed = {"x": ids, "mask": np.ones_like(ids, dtype=bool)}
        np.savez(folder / f"{i:03d}.npz", **feed)
        feeds.append(feed)
    return feeds


def tags(model: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [session.run(None, feed)[0].argmax(axis=-1) for feed in feeds]


def main() -> None:
    try:
        model = package_file("khmersm", "khmersm/model.onnx")
    except (importlib.metadata.PackageNotFoundError, StopIteration):
        sys.exit("khmersm is not installed: pip install --no-deps khmersm==1.4.2")
    char2id = json.loads(model.with_name("config.json").read_text(encoding="utf-8"))["char2id"]
    sentences = [s for s in (HERE / "data" / "khmer_sentences.txt").read_text(encoding="utf-8").splitlines() if s]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_feeds(folder / "calibration", sentences[:32], char2id)
        held_out = write_feeds(folder / "held_out", sentences[32:], char2id)
        reference = tags(model, held_out)
        print(f"khmersm: {len(sentences[:32])} calibration sentences, {len(held_out)} held-out sentences")
        print(f"{'method':<22} {'held-out rel L2':>15} {'tags unchanged':>14} {'time s':>7}")
        for label in (
            "magnitude",
            "wanda",
            "sparsegpt",
            "wanda --sequential",
            "sparsegpt --sequential",
            "wanda --refit",
            "sparsegpt --refit",
        ):
            method, *flags = label.split()
            out, report = folder / f"{method}.onnx", folder / f"{method}.json"
            extra = [] if method == "magnitude" else ["--calibration", str(folder / "calibration"), *flags]
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "sparse24_onnx.optimize", str(model), str(out), "-q", "--method", method,
                 "--inputs", str(folder / "held_out"), "--report", str(report), *extra],
                check=True,
            )  # fmt: skip
            seconds = time.perf_counter() - start
            error = json.loads(report.read_text())["validation"]["worst_rel_l2_error"]
            pruned = tags(out, held_out)
            same = sum(int((a == b).sum()) for a, b in zip(reference, pruned, strict=True))
            total = sum(a.size for a in reference)
            print(f"{label:<22} {error:>15.4f} {same / total:>14.1%} {seconds:>7.1f}")


if __name__ == "__main__":
    main()
