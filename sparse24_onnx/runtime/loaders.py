"""Built-in feed loaders for the two common cases: text through a tokenizer, images through their
preprocessing.  Each returns feeds (``{input name: array}`` dicts) that :func:`~.feeds.load_feeds`
then checks and describes like any others.

* text (``pip install 'sparse24-onnx[text]'``, Hugging Face ``tokenizers``): one line of a text file per
  feed, or, with ``seq_len``, windows of ``seq_len`` tokens over the whole text; ``input_ids``,
  ``attention_mask`` (ones), ``token_type_ids`` (zeros) and ``position_ids`` filled by name.
* images (``pip install 'sparse24-onnx[images]'``, Pillow): every image file of a folder, resized to
  ``H x W``, scaled to [0, 1], normalised by ``(x - mean) / std``, in ``NCHW`` or ``NHWC`` order and
  ``RGB`` or ``BGR`` channels (or raw 0-255 for ``uint8``): the recipe people copy from their
  inference code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInput
from .feeds import InputSpec

__all__ = ["IMAGE_SUFFIXES", "ImageRecipe", "image_feeds", "parse_size", "text_feeds"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
#: Token inputs filled by name, and how.
_TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def _need(module: str, extra: str, option: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BadInput(f"{option} needs the {module} package: pip install 'sparse24-onnx[{extra}]'") from None


def text_feeds(
    path: Path, tokenizer: str | Path, specs: list[InputSpec], *, seq_len: int | None, option: str
) -> list[dict[str, np.ndarray]]:
    """Feeds from a text file through a ``tokenizer.json`` (see the module docstring)."""
    tokenizers = _need("tokenizers", "text", option)
    try:
        tok = tokenizers.Tokenizer.from_file(str(tokenizer))
    except Exception as error:
        raise BadInput(f"--tokenizer {tokenizer}: not a readable tokenizer.json ({error})") from None
    names = {spec.name: spec for spec in specs}
    unknown = [name for name in names if name not in _TEXT_INPUTS]
    if "input_ids" not in names or unknown:
        raise BadInput(
            f"{option} {path}: a text file feeds input_ids (and attention_mask, token_type_ids, position_ids); "
            f"the model takes {', '.join(names)}: use a loader script for the others"
        )
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"{option} {path}: cannot read it as UTF-8 text ({error})") from None
    if seq_len is None:
        sequences = [enc.ids for enc in tok.encode_batch(lines)]
    else:
        ids = [i for enc in tok.encode_batch(lines) for i in enc.ids]
        sequences = [ids[start : start + seq_len] for start in range(0, len(ids) - seq_len + 1, seq_len)]
    sequences = [s for s in sequences if s]
    if not sequences:
        raise BadInput(f"{option} {path}: no tokens (an empty file, or --seq-len longer than the whole text)")
    feeds = []
    for sequence in sequences:
        ids = np.asarray([sequence], dtype=np.int64)
        values = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
            "position_ids": np.arange(ids.shape[1], dtype=np.int64)[None, :],
        }
        feeds.append({name: values[name].astype(names[name].dtype or np.int64) for name in names})
    return feeds


def parse_size(text: str) -> tuple[int, int]:
    """``224``, ``224x224`` or ``256,192`` as ``(height, width)``."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[x,]\s*(\d+))?\s*", str(text))
    if not match or int(match.group(1)) < 1:
        raise BadInput(f"--image-size {text!r}: expected H or HxW such as 224x224")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


@dataclass(frozen=True)
class ImageRecipe:
    """How images become an input tensor (the numbers of the model's own preprocessing).

    Attributes:
        size: ``(height, width)`` to resize to.
        mean, std: Per channel, on values scaled to [0, 1] (ImageNet's: 0.485,0.456,0.406 / 0.229,0.224,0.225).
        layout: ``NCHW`` or ``NHWC``.
        channels: ``RGB`` or ``BGR`` (1 channel: grey).
        dtype: ``float32``, ``float16`` or ``uint8`` (raw 0-255, no normalisation).
    """

    size: tuple[int, int]
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    channels: str = "RGB"
    dtype: str = "float32"

    def check(self) -> None:
        if self.layout not in ("NCHW", "NHWC"):
            raise BadInput(f"--layout {self.layout!r}: choose NCHW or NHWC")
        if self.channels not in ("RGB", "BGR"):
            raise BadInput(f"--channels {self.channels!r}: choose RGB or BGR")
        if self.dtype not in ("float32", "float16", "uint8"):
            raise BadInput(f"--image-dtype {self.dtype!r}: choose float32, float16 or uint8")
        if any(s == 0 for s in self.std):
            raise BadInput("--std: a standard deviation of 0 divides by zero")


def image_feeds(folder: Path, recipe: ImageRecipe, specs: list[InputSpec], *, option: str) -> Iterator[dict]:
    """Feeds from the image files of ``folder`` (sorted by name) for the model's one image-like input, one
    image read at a time (a generator: wrap it in a function to read the folder again on every pass)."""
    image = _need("PIL.Image", "images", option)
    recipe.check()
    rank4 = [spec for spec in specs if len(spec.dims) == 4]
    if len(specs) != 1 or not rank4:
        raise BadInput(
            f"{option} {folder}: a folder of images feeds a model with one 4-D image input; the model takes "
            f"{', '.join(s.name for s in specs)}: use a loader script"
        )
    spec = rank4[0]
    channel_axis = 1 if recipe.layout == "NCHW" else 3
    channels = spec.dims[channel_axis] if isinstance(spec.dims[channel_axis], int) else 3
    if channels not in (1, 3):
        raise BadInput(f"{option}: input {spec.name!r} has {channels} channels on axis {channel_axis} "
                       f"({recipe.layout}); images give 1 or 3")  # fmt: skip
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BadInput(f"{option} {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    mean = _per_channel(recipe.mean, channels, "--mean")
    std = _per_channel(recipe.std, channels, "--std")
    height, width = recipe.size
    for file in files:
        try:
            with image.open(file) as picture:
                picture = picture.convert("L" if channels == 1 else "RGB").resize((width, height), image.BILINEAR)
                pixels = np.asarray(picture, dtype=np.uint8).reshape(height, width, channels)
        except Exception as error:
            raise BadInput(f"{option} {file}: not a readable image ({type(error).__name__}: {error})") from None
        if recipe.channels == "BGR" and channels == 3:
            pixels = pixels[..., ::-1]
        if recipe.dtype == "uint8":
            array = pixels
        else:
            array = ((pixels.astype(np.float32) / 255.0 - mean) / std).astype(recipe.dtype)
        if recipe.layout == "NCHW":
            array = np.transpose(array, (2, 0, 1))
        yield {spec.name: np.ascontiguousarray(array[None])}


def _per_channel(values: Sequence[float], channels: int, option: str) -> np.ndarray:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise BadInput(f"{option}: give 1 or {channels} numbers, got {len(values)}")
    return np.asarray(values, dtype=np.float32)
