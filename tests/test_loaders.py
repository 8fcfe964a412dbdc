"""The built-in loaders: text through a tokenizer made here with `tokenizers`, images made with Pillow."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from models.build_models import transformer
from sparse24_onnx import BadInput, prune_model
from sparse24_onnx.runtime.feeds import InputSpec
from sparse24_onnx.runtime.loaders import ImageRecipe, image_feeds, text_feeds
from tests.helpers import run_module

F = TensorProto.FLOAT


def _english(count: int) -> list[str]:
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    return [" ".join(words[i * 12 : i * 12 + 12]) for i in range(count)]


@pytest.fixture
def tokenizer_file(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(_english(200), trainers.WordLevelTrainer(vocab_size=100, special_tokens=["[UNK]"]))
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_text_through_a_tokenizer(tmp_path, tokenizer_file):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_english(40)) + "\n\n", encoding="utf-8")
    model = tmp_path / "t.onnx"
    onnx.save(transformer(), model)
    specs = [InputSpec("input_ids", "tensor(int64)", ("batch", "seq"))]
    lines = text_feeds(corpus, tokenizer_file, specs, seq_len=None, option="calibration")
    assert len(lines) == 40  # one feed per non-empty line
    assert all(f["input_ids"].shape[0] == 1 and f["input_ids"].max() < 100 for f in lines)
    windows = text_feeds(corpus, tokenizer_file, specs, seq_len=8, option="calibration")
    assert all(f["input_ids"].shape == (1, 8) for f in windows)
    result = prune_model(model, tmp_path / "o.onnx", calibration=str(corpus), tokenizer=str(tokenizer_file),
                         seq_len=16, validate=False)  # fmt: skip
    calibration = result.report["calibration"]
    assert calibration["method"] == "sparsegpt"
    assert "text through" in calibration["source"]
    assert calibration["feeds"] == len(text_feeds(corpus, tokenizer_file, specs, seq_len=16, option="c"))
    cli = run_module("optimize", model, tmp_path / "c.onnx", "--calibration", corpus, "--tokenizer", tokenizer_file,
                     "--inputs", corpus, "--max-rel-error", "5")  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    with pytest.raises(BadInput, match="a text file feeds input_ids"):
        text_feeds(corpus, tokenizer_file, [InputSpec("x", "tensor(float)", (1, 4))], seq_len=None, option="c")


def _rgb_cnn(path):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["image", "c1"], ["h"], name="/c1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "c2"], ["y"], name="/c2/Conv", pads=[1, 1, 1, 1]),
    ]
    inits = [
        numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) / 5).astype(np.float32), "c1"),
        numpy_helper.from_array((rng.standard_normal((32, 16, 3, 3)) / 12).astype(np.float32), "c2"),
    ]
    graph = helper.make_graph(
        nodes, "rgb", [helper.make_tensor_value_info("image", F, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("y", F, [1, 32, "height", "width"])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_images_through_their_preprocessing(tmp_path):
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    pictures = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(6)]
    for i, pixels in enumerate(pictures):
        image.fromarray(pixels).save(folder / f"{i}.png")
    specs = [InputSpec("image", "tensor(float)", (1, 3, "height", "width"))]
    recipe = ImageRecipe((16, 16), (0.5, 0.4, 0.3), (0.25, 0.2, 0.1), "NCHW", "BGR", "float32")
    feeds = list(image_feeds(folder, recipe, specs, option="calibration"))
    expected = (pictures[0][..., ::-1] / 255.0 - np.array([0.5, 0.4, 0.3])) / np.array([0.25, 0.2, 0.1])
    np.testing.assert_allclose(feeds[0]["image"][0], expected.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    model = _rgb_cnn(tmp_path / "cnn.onnx")
    result = prune_model(model, tmp_path / "o.onnx", calibration=str(folder), image_size="16x16", mean="0.5",
                         std="0.25", tc_shapes="off", validate=False)  # fmt: skip
    assert result.report["calibration"]["feeds"] == 6
    assert result.report["calibration"]["inputs"][0]["shapes"] == [[1, 3, 16, 16]]
    bare = run_module("optimize", model, tmp_path / "b.onnx", "--calibration", folder, "--no-validate")
    assert bare.returncode == 2
    assert "a folder of images: give --image-size" in bare.stderr
    stray = run_module("optimize", model, tmp_path / "b.onnx", "--mean", "0.5", "--no-validate")
    assert stray.returncode == 2
    assert "--mean describe images" in stray.stderr
