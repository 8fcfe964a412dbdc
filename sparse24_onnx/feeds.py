"""Input feeds for validation: read from ``.npz`` files or generated from a fixed seed.

A feed is one ``{input name: array}`` dict, one run of the model.

Generated values: floats are standard normal; integers are uniform in
``[low, high)``, by default ``[0, vocab)`` for an input that only feeds
``Gather`` lookups into constant tables (token ids into an embedding: ``vocab``
is the smallest table) and ``[0, 2)`` otherwise; booleans are fair coin flips.
Dynamic dimensions are 1 unless ``--shape`` sets them.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from .errors import BadInput

__all__ = [
    "InputSpec",
    "generate_feeds",
    "infer_int_ranges",
    "load_feeds",
    "parse_int_ranges",
    "parse_shapes",
]

Feed = dict[str, np.ndarray]

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64,
    "tensor(uint32)": np.uint32,
    "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

_DEFAULT_INT_RANGE = (0, 2)


@dataclass(frozen=True)
class InputSpec:
    """A graph input as onnxruntime declares it.

    Attributes:
        name: Input name.
        type: onnxruntime's type string, e.g. ``tensor(float)``.
        dims: One entry per axis: an int for a fixed size, a string for a named
            (symbolic) dimension, ``None`` for an unnamed dynamic one.
    """

    name: str
    type: str
    dims: tuple[int | str | None, ...]

    @property
    def dtype(self) -> np.dtype | None:
        """NumPy dtype, or None for types that cannot be generated (strings, maps)."""
        found = _ORT_TYPES.get(self.type)
        return np.dtype(found) if found is not None else None

    @classmethod
    def from_session(cls, session) -> list[InputSpec]:
        """The inputs of an ``onnxruntime.InferenceSession``."""
        return [
            cls(arg.name, arg.type, tuple(d if isinstance(d, (int, str)) else None for d in arg.shape))
            for arg in session.get_inputs()
        ]


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``--shape NAME=1x128`` options into ``{NAME: (1, 128)}``."""
    shapes = {}
    for item in items:
        match = re.fullmatch(r"\s*([^=]+?)\s*=\s*(\d+(?:\s*[x,]\s*\d+)*)\s*", item)
        if not match:
            raise BadInput(f"--shape {item!r}: expected NAME=DIMS such as input_ids=1x128 or seq=128")
        shapes[match.group(1)] = tuple(int(d) for d in re.split(r"\s*[x,]\s*", match.group(2)))
    return shapes


def parse_int_ranges(items: list[str]) -> tuple[tuple[int, int] | None, dict[str, tuple[int, int]]]:
    """Parse ``--int-range LOW:HIGH`` (all integer inputs) and ``--int-range NAME=LOW:HIGH``."""
    default = None
    per_input = {}
    for item in items:
        match = re.fullmatch(r"\s*(?:([^=]+?)\s*=\s*)?(-?\d+)\s*:\s*(-?\d+)\s*", item)
        if not match or int(match.group(2)) >= int(match.group(3)):
            raise BadInput(f"--int-range {item!r}: expected [NAME=]LOW:HIGH with LOW < HIGH, e.g. 0:30522")
        bounds = (int(match.group(2)), int(match.group(3)))
        if match.group(1) is None:
            default = bounds
        else:
            per_input[match.group(1)] = bounds
    return default, per_input


def infer_int_ranges(model: ir.Model) -> dict[str, tuple[int, int]]:
    """``[0, rows)`` for integer graph inputs used only as ``Gather`` indices into constant tables."""
    ranges = {}
    for value in model.graph.inputs:
        if value.dtype is None or not value.dtype.is_integer():
            continue
        sizes = []
        for node, index in value.uses():
            table = node.inputs[0] if node.inputs else None
            if node.op_type != "Gather" or index != 1 or table is None or table.const_value is None:
                sizes = []
                break
            axis = node.attributes.get_int("axis", 0)
            sizes.append(int(table.const_value.shape[axis]))
        if sizes:
            ranges[value.name] = (0, min(sizes))
    return ranges


def _resolve_dims(spec: InputSpec, shapes: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    if spec.name in shapes:
        wanted = shapes[spec.name]
        if len(wanted) != len(spec.dims) or any(
            isinstance(d, int) and d != w for d, w in zip(spec.dims, wanted, strict=False)
        ):
            raise BadInput(f"--shape {spec.name}={'x'.join(map(str, wanted))}: the model declares {_show(spec.dims)}")
        return wanted
    dims = []
    for d in spec.dims:
        if isinstance(d, int):
            dims.append(d)
        elif isinstance(d, str) and d in shapes:
            if len(shapes[d]) != 1:
                raise BadInput(f"--shape {d}=...: {d} is a single dimension, give one number")
            dims.append(shapes[d][0])
        else:
            dims.append(1)
    return tuple(dims)


def _show(dims: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _check_shape_names(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]]) -> None:
    known = {s.name for s in specs} | {d for s in specs for d in s.dims if isinstance(d, str)}
    for name in shapes:
        if name not in known:
            choices = ", ".join(f"{s.name}{_show(s.dims)}" for s in specs) or "none"
            raise BadInput(f"--shape {name}: no input or named dimension {name!r}; inputs are {choices}")


def generate_feeds(
    specs: list[InputSpec],
    *,
    shapes: dict[str, tuple[int, ...]],
    int_ranges: dict[str, tuple[int, int]],
    default_int_range: tuple[int, int] | None,
    seed: int,
    count: int,
) -> list[Feed]:
    """``count`` feeds of seeded random values (see the module docstring)."""
    _check_shape_names(specs, shapes)
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for spec in specs:
            dtype = spec.dtype
            if dtype is None:
                raise BadInput(
                    f"input {spec.name!r} has type {spec.type}, for which no values can be generated; "
                    "pass them with --inputs"
                )
            dims = _resolve_dims(spec, shapes)
            if dtype.kind == "f":
                array = rng.standard_normal(dims)
            elif dtype.kind == "b":
                array = rng.random(dims) < 0.5
            else:
                low, high = int_ranges.get(spec.name) or default_int_range or _DEFAULT_INT_RANGE
                info = np.iinfo(dtype)
                array = rng.integers(max(low, info.min), min(high, info.max + 1), size=dims)
            feed[spec.name] = np.asarray(array, dtype=dtype)  # 0-d inputs too: an array, not a scalar
        feeds.append(feed)
    return feeds


def load_feeds(path: str | os.PathLike, specs: list[InputSpec], option: str = "--inputs") -> list[Feed]:
    """Read feeds from a ``.npz`` keyed by input name, or a folder of such files (one feed each).

    Every input must be present with the declared rank and fixed dimensions, and
    a dtype that converts without changing kind (int32 for int64, say).  Errors
    name ``option``, the command-line option the path came from.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.npz"))
        if not files:
            raise BadInput(f"{option} {path}: folder holds no .npz files")
    elif path.is_file():
        files = [path]
    else:
        raise BadInput(f"{option} {path}: no such file or folder")
    return [_load_feed(file, specs, option) for file in files]


def _load_feed(file: Path, specs: list[InputSpec], option: str) -> Feed:
    try:
        data = np.load(file, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise BadInput(f"{option} {file}: holds one unnamed array (.npy); save the inputs by name with numpy.savez")
        with data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise BadInput(f"{option} {file}: not a readable .npz file ({error})") from None
    feed = {}
    for spec in specs:
        if spec.name not in arrays:
            raise BadInput(
                f"{option} {file}: no array for input {spec.name!r} (keys: {', '.join(sorted(arrays)) or 'none'})"
            )
        array = arrays[spec.name]
        dims = spec.dims
        if array.ndim != len(dims) or any(
            isinstance(d, int) and d != n for d, n in zip(dims, array.shape, strict=False)
        ):
            raise BadInput(
                f"{option} {file}: {spec.name!r} has shape {list(array.shape)}, the model declares {_show(dims)}"
            )
        dtype = spec.dtype
        if dtype is not None and array.dtype != dtype:
            if array.dtype.kind != dtype.kind and not (array.dtype.kind in "iu" and dtype.kind in "iu"):
                raise BadInput(f"{option} {file}: {spec.name!r} is {array.dtype}, the model takes {spec.type}")
            array = array.astype(dtype)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise BadInput(f"{option} {file}: {spec.name!r} holds NaN or Inf, which make output errors meaningless")
        feed[spec.name] = array
    return feed
