"""Input feeds for validation and calibration: read from ``.npz`` files or arrays, or generated.

A feed is one ``{input name: array}`` dict, one run of the model.  A
:class:`FeedSet` holds the feeds and says what they are: per input the shapes,
dtype and source, and warnings about what was assumed, so that a weak
validation can be diagnosed from the report.

Generated values (seeded): floats are standard normal; integers are uniform in
``[low, high)``, by default ``[0, rows)`` for an input that only feeds
``Gather`` lookups into constant tables (token ids into an embedding), all ones
for a mask (an integer or boolean input whose name contains ``mask``), else
``[0, 2)``; other booleans are fair coin flips.

Dynamic dimensions not set with ``--shape``:

* in a key/value-cache input (``past_key_values.0.key``, ``past.1.value``,
  ``layer.2.past_key`` ...; see :func:`is_cache_input`), the cache length is 0:
  an empty cache, as for a prompt's first step;
* a sequence-like dimension (its name says ``seq``, ``length``, ``tokens``,
  ``time`` ...) gets :data:`SEQUENCE_LENGTH`, so that attention sees more than
  one position;
* any other (batch, unnamed) is 1, with a warning.

Dimensions of the same name are the same size in every input (ONNX's rule);
files whose arrays disagree are refused before onnxruntime runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..errors import BadInput

__all__ = [
    "MAX_GENERATED_BYTES",
    "SEQUENCE_LENGTH",
    "FeedSet",
    "InputSpec",
    "generate_feeds",
    "infer_int_ranges",
    "is_cache_input",
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
#: ml_dtypes' element types, which NumPy can hold but onnxruntime cannot be fed from.
_NARROW_FLOATS = frozenset(
    {"bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "int4", "uint4", "float4_e2m1fn"}
)
#: Length given to sequence-like dynamic dimensions that ``--shape`` does not set.
SEQUENCE_LENGTH = 16
#: What ``assumed`` says of a dynamic dimension nothing told the size of (warned about, by identity).
DEFAULTED = "1: not set by --shape"
#: Height and width given to the dynamic spatial dimensions of image-like inputs.
IMAGE_SIZE = 224
#: Generated feeds larger than this in all are refused (the estimate is given).
MAX_GENERATED_BYTES = 4 << 30

#: Names of key/value-cache inputs as exporters write them (optimum, onnxruntime-genai,
#: torch.onnx of Hugging Face models): past_key_values.0.key, past.0.value, layer.0.past_key ...
_CACHE_NAME = re.compile(
    r"(^|[._/])(past_key_values|past_key_value|past|cache|kv_cache|past_keys|past_values)([._/]|$)"
    r"|past_key|past_value|_cache$|^cache_",
    re.IGNORECASE,
)
_SEQUENCE_NAME = re.compile(r"seq|length|len\b|len_|tokens?|time|frames|total|position", re.IGNORECASE)
_BATCH_NAME = re.compile(r"batch", re.IGNORECASE)


def is_cache_input(name: str) -> bool:
    """Whether a graph input is a key/value cache by its name (``past_key_values.0.key`` ...)."""
    return bool(_CACHE_NAME.search(name))


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

    @property
    def type_name(self) -> str:
        """The element type in NumPy's words (``float32``), or onnxruntime's type for non-tensors."""
        dtype = self.dtype
        return str(dtype) if dtype is not None else self.type

    @property
    def tensor(self) -> bool:
        """A tensor input (not a sequence, map or optional), which an ``.npz`` array can feed."""
        return self.type.startswith("tensor(")

    def declares_empty(self) -> bool:
        """Some fixed dimension is 0: the model expects an empty tensor here."""
        return any(d == 0 for d in self.dims if isinstance(d, int))

    @property
    def cache(self) -> bool:
        return is_cache_input(self.name)

    @classmethod
    def from_session(cls, session) -> list[InputSpec]:
        """The inputs of an ``onnxruntime.InferenceSession``."""
        return [
            cls(arg.name, arg.type, tuple(d if isinstance(d, (int, str)) else None for d in arg.shape))
            for arg in session.get_inputs()
        ]


@dataclass
class FeedSet:
    """Feeds and what they are.

    Attributes:
        feeds: One ``{input name: array}`` per run.
        source: Where they came from (a path, ``arrays``, or ``generated (seed N)``).
        inputs: Per input: ``name``, ``dtype``, ``shapes`` (the distinct shapes fed),
            ``values`` (how generated values were drawn, or ``from file``) and, for
            generated feeds, ``assumed`` (dynamic dimensions the tool chose, with why).
        warnings: One-line warnings (a dimension defaulted to 1 ...).
        hint: What to look at when onnxruntime refuses these feeds.
    """

    feeds: Sequence[Feed]
    source: str
    inputs: list[dict[str, object]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hint: str = ""

    def __len__(self) -> int:
        return len(self.feeds)

    def summary(self) -> list[str]:
        """One line per input (inputs alike, such as the caches of every layer, share a line)."""
        groups: dict[tuple, list[str]] = {}
        for entry in self.inputs:
            listed = ["x".join(map(str, s)) or "scalar" for s in entry["shapes"]]
            shapes = " or ".join(listed) if len(listed) <= 3 else f"{len(listed)} shapes, {listed[0]} to {listed[-1]}"
            assumed = ", ".join(f"{k}={v.split(':')[0]}" for k, v in entry.get("assumed", {}).items())
            key = (entry["dtype"], shapes, entry["values"], assumed)
            groups.setdefault(key, []).append(str(entry["name"]))
        lines = []
        for (dtype, shapes, values, assumed), names in groups.items():
            label = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more alike"
            lines.append(f"input {label}: {dtype} {shapes}, {values}" + (f" (assumed {assumed})" if assumed else ""))
        return lines


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``--shape`` options into ``{NAME: sizes}``: ``input_ids=1x128``, ``seq=128``, and the spellings
    of trtexec (``input_ids:1x128``) and Polygraphy (``input_ids:[1,128]``), which users already type."""
    shapes = {}
    dims = r"\[?\s*(\d+(?:\s*[x,]\s*\d+)*)\s*\]?"
    for item in items:
        match = re.fullmatch(rf"\s*([^=]+?)\s*=\s*{dims}\s*", item) or re.fullmatch(rf"\s*(.+?)\s*:\s*{dims}\s*", item)
        if not match:
            raise BadInput(
                f"--shape {item!r}: expected NAME=DIMS such as input_ids=1x128 or seq=128 (or input_ids:[1,128])"
            )
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


#: Ops that pass integer ids through unchanged on their way to a lookup.
_ID_PASSING = frozenset({"Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten"})


def _lookup_sizes(value: ir.Value, depth: int = 0) -> list[int] | None:
    """Sizes of the constant tables ``value``'s ids index (``Gather``), followed through ops that pass ids
    on unchanged; None when some use is anything else.  Uses that read only the shape and graph outputs do
    not count (an export that also returns its ``input_ids`` still takes ids below the table size)."""
    sizes: list[int] = []
    for node, index in value.uses():
        if node.op_type in ("Shape", "Size"):
            continue
        if node.op_type in _ID_PASSING and index == 0 and depth < 8:
            found = _lookup_sizes(node.outputs[0], depth + 1)
            if found is None:
                return None
            sizes += found
            continue
        table = node.inputs[0] if node.inputs else None
        if node.op_type != "Gather" or index != 1 or table is None or table.const_value is None:
            return None
        axis = node.attributes.get_int("axis", 0)
        sizes.append(int(table.const_value.shape[axis]))
    return sizes


def infer_int_ranges(model: ir.Model) -> dict[str, tuple[int, int]]:
    """``[0, rows)`` for integer graph inputs used only as ``Gather`` indices into constant tables.

    Uses that read only the input's shape (``Shape``, ``Size``) do not count, and ids are followed
    through ``Identity``, ``Cast`` and reshaping ops.
    """
    ranges = {}
    for value in model.graph.inputs:
        if value.dtype is None or not value.dtype.is_integer():
            continue
        sizes = _lookup_sizes(value)
        if sizes:
            ranges[value.name] = (0, min(sizes))
    return ranges


def _show(dims: Sequence[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _check_shape_names(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]]) -> None:
    known = {s.name for s in specs} | {d for s in specs for d in s.dims if isinstance(d, str)}
    for name in shapes:
        if name not in known:
            choices = ", ".join(f"{s.name}{_show(s.dims)}" for s in specs) or "none"
            raise BadInput(f"--shape {name}: no input or named dimension {name!r}; inputs are {choices}")


def _is_cache_length(spec: InputSpec, axis: int, d: int | str | None, cache_dims: set[str]) -> bool:
    """Whether dimension ``d`` (at ``axis``) of a cache input is its cache length: an unnamed dynamic
    dimension after the batch, or a name only caches have (the one rule, for generated and loaded feeds)."""
    return spec.cache and ((d is None and axis > 0) or d in cache_dims)


def _cache_dims(specs: list[InputSpec]) -> set[str]:
    """Named dimensions that only cache inputs have (their cache length), batch-like names excepted."""
    in_cache = {d for s in specs if s.cache for d in s.dims if isinstance(d, str) and not _BATCH_NAME.search(d)}
    elsewhere = {d for s in specs if not s.cache for d in s.dims if isinstance(d, str)}
    return in_cache - elsewhere


def _resolve_dims(
    spec: InputSpec, shapes: dict[str, tuple[int, ...]], cache_dims: set[str], assumed: dict[str, str]
) -> tuple[int, ...]:
    """The sizes to generate ``spec`` with; records in ``assumed`` each dynamic size the tool chose."""
    if spec.name in shapes:
        wanted = shapes[spec.name]
        if len(wanted) != len(spec.dims) or any(
            isinstance(d, int) and d != w for d, w in zip(spec.dims, wanted, strict=False)
        ):
            raise BadInput(f"--shape {spec.name}={'x'.join(map(str, wanted))}: the model declares {_show(spec.dims)}")
        return wanted
    dims = []
    spatial = _image_axes(spec)
    for axis, d in enumerate(spec.dims):
        label = d if isinstance(d, str) else f"axis {axis}"
        if isinstance(d, int):
            dims.append(d)
        elif axis in spatial and not (isinstance(d, str) and d in shapes):
            dims.append(IMAGE_SIZE)
            assumed[label] = f"{IMAGE_SIZE}: an image's height or width (a CNN's usual input size)"
        elif isinstance(d, str) and d in shapes:
            if len(shapes[d]) != 1:
                raise BadInput(f"--shape {d}=...: {d} is a single dimension, give one number")
            dims.append(shapes[d][0])
        elif _is_cache_length(spec, axis, d, cache_dims):
            dims.append(0)
            assumed[label] = "0: empty key/value cache, as for a prompt's first step"
        elif isinstance(d, str) and _SEQUENCE_NAME.search(d) and not _BATCH_NAME.search(d):
            dims.append(SEQUENCE_LENGTH)
            assumed[label] = f"{SEQUENCE_LENGTH}: a sequence length, so that attention sees several positions"
        else:
            dims.append(1)
            assumed[label] = DEFAULTED
    return tuple(dims)


def _image_axes(spec: InputSpec) -> tuple[int, ...]:
    """The dynamic height and width axes of an image-like input (rank 4, 1/3/4 channels, NCHW or NHWC)."""
    dims = spec.dims
    if len(dims) != 4 or spec.dtype is None or spec.dtype.kind not in "fu":
        return ()
    for channel, spatial in ((1, (2, 3)), (3, (1, 2))):
        if dims[channel] in (1, 3, 4) and all(not isinstance(dims[a], int) for a in spatial):
            return spatial
    return ()


def _value_rule(spec: InputSpec, int_ranges: dict[str, tuple[int, int]], default: tuple[int, int] | None):
    """How values of ``spec`` are drawn: ``(description, kind, bounds)``."""
    dtype = spec.dtype
    if dtype.kind == "f":
        return "standard normal", "normal", None
    if dtype == np.uint8 and len(spec.dims) == 4 and spec.name not in int_ranges and default is None:
        return "integers in [0, 256) (8-bit image values)", "integers", (0, 256)
    masked = "mask" in spec.name.lower()
    if dtype.kind == "b":
        return ("all true (a mask)", "ones", None) if masked else ("fair coin flips", "coin", None)
    if spec.name in int_ranges:
        low, high = int_ranges[spec.name]
    elif default is not None:
        low, high = default
    elif masked:
        return "all ones (a mask)", "ones", None
    else:
        low, high = _DEFAULT_INT_RANGE
    info = np.iinfo(dtype)
    low, high = max(low, int(info.min)), min(high, int(info.max) + 1)
    return f"integers in [{low}, {high})", "integers", (low, high)


def generate_feeds(
    specs: list[InputSpec],
    *,
    shapes: dict[str, tuple[int, ...]],
    int_ranges: dict[str, tuple[int, int]],
    default_int_range: tuple[int, int] | None,
    seed: int,
    count: int,
) -> FeedSet:
    """``count`` feeds of seeded random values (see the module docstring), described.

    Raises:
        BadInput: A ``--shape`` name matches nothing, an input's type cannot be
            generated, a non-cache input would be empty, or the feeds would exceed
            :data:`MAX_GENERATED_BYTES` (checked before anything is allocated).
    """
    _check_shape_names(specs, shapes)
    cache_dims = _cache_dims(specs)
    plans = []
    total = 0
    for spec in specs:
        if spec.dtype is None:
            remedy = (
                "pass them with --inputs"
                if spec.tensor
                else "an .npz cannot hold it either: validate from Python with feeds as dicts "
                "(prune_model(..., inputs=[{...}])) or pass --no-validate"
            )
            raise BadInput(f"input {spec.name!r} has type {spec.type}, for which no values can be generated; {remedy}")
        assumed: dict[str, str] = {}
        dims = _resolve_dims(spec, shapes, cache_dims, assumed)
        size = 1
        for d in dims:
            size *= d
        if size == 0 and not spec.cache and not spec.declares_empty():
            raise BadInput(f"input {spec.name!r} would be empty (shape {list(dims)}): give every size with --shape")
        total += size * spec.dtype.itemsize * count
        rule = _value_rule(spec, int_ranges, default_int_range)
        if size == 0:
            rule = ("empty: a key/value cache, as for a prompt's first step", rule[1], rule[2])
        plans.append((spec, dims, assumed, rule))
    if total > MAX_GENERATED_BYTES:
        raise BadInput(
            f"generated inputs would take {total / 2**30:.3g} GiB ({count} feed(s)); the limit is "
            f"{MAX_GENERATED_BYTES / 2**30:.0f} GiB: lower --shape or --num-feeds, or pass --inputs"
        )
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        feed = {}
        for spec, dims, _, (_, kind, bounds) in plans:
            if kind == "normal":
                array = rng.standard_normal(dims)
            elif kind == "coin":
                array = rng.random(dims) < 0.5
            elif kind == "ones":
                array = np.ones(dims)
            else:
                array = rng.integers(bounds[0], bounds[1], size=dims)
            feed[spec.name] = np.asarray(array, dtype=spec.dtype)  # 0-d inputs too: an array, not a scalar
        feeds.append(feed)
    described = FeedSet(
        feeds,
        f"generated (seed {seed})",
        hint="set dynamic sizes with --shape NAME=N and integer ranges with --int-range, or pass real inputs "
        "with --inputs",
    )
    defaulted: dict[str, list[str]] = {}
    for spec, dims, assumed, (values, _, _) in plans:
        entry: dict[str, object] = {
            "name": spec.name,
            "dtype": str(spec.dtype),
            "shapes": [list(dims)],
            "values": values,
        }
        if assumed:
            entry["assumed"] = assumed
        described.inputs.append(entry)
        for label, why in assumed.items():
            if why is DEFAULTED:
                key = f"{label} of {spec.name!r}" if label.startswith("axis") else label
                defaulted.setdefault(key, []).append(spec.name)
    if defaulted:
        shown = ", ".join(defaulted)
        described.warnings.append(
            f"dynamic dimension(s) not set and defaulted to 1: {shown}; set them with --shape NAME=N "
            "(a named dimension) or --shape INPUT=1x2x... (a whole input)"
        )
    return described


class FeedStream(Sequence):
    """Feeds read again on every pass from where they live (``.npz`` files, a loader script, a callable),
    each checked as it comes: one feed in memory at a time, however many there are.

    ``len()`` is known from the first pass; indexing and slicing read up to what they need.
    """

    def __init__(self, produce: Callable[[], Iterable[tuple[str, Mapping[str, object]]]], specs, count: int) -> None:
        self._produce = produce
        self._specs = specs
        self._count = count

    def __iter__(self) -> Iterator[Feed]:
        for label, arrays in self._produce():
            yield _check_feed(arrays, self._specs, label)[0]

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index):
        if isinstance(index, slice):
            wanted = set(range(self._count)[index])
            return [feed for i, feed in enumerate(self) if i in wanted]
        position = range(self._count)[index]
        return next(feed for i, feed in enumerate(self) if i == position)


def load_feeds(
    source: str | os.PathLike | Sequence[Mapping[str, np.ndarray]] | Callable[[], Iterable[Mapping]],
    specs: list[InputSpec],
    option: str = "--inputs",
) -> FeedSet:
    """Feeds from a ``.npz`` keyed by input name, a folder of such files (one feed each), a loader script
    (``file.py[:function]``), a zero-argument callable returning an iterable of dicts, a list or iterable of
    dicts, or a ``get_next()`` reader.

    Files, loader scripts and callables are streamed (:class:`FeedStream`): read again on each pass, one
    feed in memory at a time; one-shot iterables and readers are read once, into memory.

    Every input must be present with the declared rank and fixed dimensions, a
    dtype that converts without changing kind (int32 for int64, say), no key that
    is no input, no empty array (a key/value-cache input may be empty), and the same
    size for a named dimension everywhere in a feed.  Key/value-cache inputs that
    are missing are fed empty (an empty cache).  Errors name ``option``, the
    option the feeds came from.
    """
    option = option.rstrip("=")
    produce = None
    if isinstance(source, (str, os.PathLike)) and _is_loader_script(str(source)):

        def produce():
            return ((f"{option} {source} feed {i}", f) for i, f in enumerate(_run_loader(str(source), option)))

        where = str(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(path.glob("*.npz"))
            if not files:
                raise BadInput(f"{option} {path}: folder holds no .npz files")
        elif path.is_file():
            files = [path]
        else:
            raise BadInput(f"{option} {path}: no such file or folder")

        def produce():
            return ((f"{option} {file}", _read_npz(file, option)) for file in files)

        where = str(path)
    elif callable(source) and not callable(getattr(source, "get_next", None)):

        def produce():
            try:
                produced = source()
            except Exception as error:
                raise BadInput(f"{option}: the feed function failed ({type(error).__name__}: {error})") from None
            return ((f"{option} feed {i}", f) for i, f in enumerate(_iterate(produced, option)))

        where = f"{getattr(source, '__name__', type(source).__name__)}()"
    else:
        named = [(f"{option} feed {i}", feed) for i, feed in enumerate(_iterate(source, option))]
        where = "arrays" if isinstance(source, Sequence) else f"{type(source).__name__} object"
    # One pass checks every feed and notes what was fed; a stream keeps none of them.
    shapes: dict[str, set[tuple[int, ...]]] = {spec.name: set() for spec in specs}
    dtypes: dict[str, str] = {}
    filled_everywhere: dict[str, bool] = {spec.name: True for spec in specs}
    kept: list[Feed] = []
    count = 0
    for label, arrays in produce() if produce is not None else named:
        feed, filled = _check_feed(arrays, specs, label)
        for spec in specs:
            shapes[spec.name].add(tuple(feed[spec.name].shape))
            dtypes.setdefault(spec.name, str(feed[spec.name].dtype))
            filled_everywhere[spec.name] &= spec.name in filled
        if produce is None:
            kept.append(feed)
        count += 1
    if not count:
        raise BadInput(f"{option} {where}: gave no feeds")
    feeds = FeedStream(produce, specs, count) if produce is not None else kept
    described = FeedSet(feeds, where, hint=f"check the arrays of {option}")
    for spec in specs:
        entry: dict[str, object] = {
            "name": spec.name,
            "dtype": dtypes[spec.name],
            "shapes": [list(s) for s in sorted(shapes[spec.name])],
            "values": f"from {option}",
        }
        if filled_everywhere[spec.name]:
            entry["values"] = "empty key/value cache (not in the files), as for a prompt's first step"
        described.inputs.append(entry)
    return described


_LOADER = re.compile(r"^(?P<file>.+\.py)(?::(?P<function>[A-Za-z_]\w*))?$")
#: The function a loader script is called through when none is named (Polygraphy's name).
LOADER_FUNCTION = "load_data"


def _is_loader_script(text: str) -> bool:
    return _LOADER.match(text) is not None


def _run_loader(spec: str, option: str):
    """Feeds from ``script.py[:function]``: the function, called without arguments, yields feed dicts."""
    import importlib.util

    match = _LOADER.match(spec)
    path = Path(match.group("file"))
    function = match.group("function") or LOADER_FUNCTION
    if not path.is_file():
        raise BadInput(f"{option} {spec}: no such loader script {path}")
    module_spec = importlib.util.spec_from_file_location(f"_sparse24_loader_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        raise BadInput(f"{option} {spec}: the loader script failed ({type(error).__name__}: {error})") from None
    loader = getattr(module, function, None)
    if not callable(loader):
        raise BadInput(f"{option} {spec}: {path} defines no function {function}() (name it with {path}:NAME)")
    try:
        produced = loader()
    except Exception as error:
        raise BadInput(f"{option} {spec}: {function}() failed ({type(error).__name__}: {error})") from None
    return _iterate(produced, f"{option} {spec}")


def _iterate(source: object, option: str):
    """Feed dicts from a list, an iterable (a generator) or a ``get_next()`` reader (onnxruntime's
    ``CalibrationDataReader``), each checked to be a mapping; errors in the user's code are bad input."""
    reader = getattr(source, "get_next", None)
    if callable(reader):

        def read():
            while (feed := reader()) is not None:
                yield feed

        items = read()
    else:
        try:
            items = iter(source)
        except TypeError:
            raise BadInput(f"{option}: {type(source).__name__} is no iterable of feed dicts") from None
    index = 0
    while True:
        try:
            feed = next(items)
        except StopIteration:
            return
        except Exception as error:
            raise BadInput(f"{option}: reading feed {index} failed ({type(error).__name__}: {error})") from None
        if not isinstance(feed, Mapping):
            raise BadInput(f"{option}: feed {index} is a {type(feed).__name__}, not a {{input name: array}} dict")
        yield dict(feed)
        index += 1


def _read_npz(file: Path, option: str) -> dict[str, np.ndarray]:
    try:
        data = np.load(file, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise BadInput(f"{option} {file}: holds one unnamed array (.npy); save the inputs by name with numpy.savez")
        with data:
            return {key: data[key] for key in data.files}
    except BadInput:
        raise
    except Exception as error:  # zipfile, zlib and numpy raise many kinds for a damaged archive
        raise BadInput(f"{option} {file}: not a readable .npz file ({type(error).__name__}: {error})") from None


def _check_feed(arrays: Mapping[str, object], specs: list[InputSpec], where: str) -> tuple[Feed, set[str]]:
    """The checked feed, and the names of the cache inputs it filled in (empty)."""
    feed: Feed = {}
    filled: set[str] = set()
    sizes: dict[str, tuple[int, str]] = {}
    for spec in specs:
        if spec.name not in arrays:
            if spec.cache and spec.dtype is not None:
                feed[spec.name] = _empty_cache(spec, arrays, specs)
                filled.add(spec.name)
                continue
            raise BadInput(f"{where}: no array for input {spec.name!r} (keys: {', '.join(sorted(arrays)) or 'none'})")
        array = np.asarray(arrays[spec.name])
        dims = spec.dims
        if array.ndim != len(dims) or any(
            isinstance(d, int) and d != n for d, n in zip(dims, array.shape, strict=False)
        ):
            raise BadInput(f"{where}: {spec.name!r} has shape {list(array.shape)}, the model declares {_show(dims)}")
        dtype = spec.dtype
        if array.dtype.kind == "V" or array.dtype.name in _NARROW_FLOATS:
            raise BadInput(
                f"{where}: {spec.name!r} holds {array.dtype} values (bfloat16, float8 and int4 arrays are stored "
                f"in .npz as raw bytes, and onnxruntime takes none of them from NumPy); save it as "
                f"{spec.type_name}"
            )
        if dtype is not None and array.dtype != dtype:
            if array.dtype.kind != dtype.kind and not (array.dtype.kind in "iu" and dtype.kind in "iu"):
                raise BadInput(f"{where}: {spec.name!r} is {array.dtype}, the model takes {spec.type_name}")
            array = array.astype(dtype)
        if array.size == 0 and not spec.cache and not spec.declares_empty():
            raise BadInput(
                f"{where}: {spec.name!r} is empty (shape {list(array.shape)}): the outputs would be empty and "
                "validation would compare nothing"
            )
        for d, n in zip(dims, array.shape, strict=False):
            if isinstance(d, str):
                seen = sizes.setdefault(d, (n, spec.name))
                if seen[0] != n:
                    raise BadInput(
                        f"{where}: dimension {d!r} is {seen[0]} in {seen[1]!r} but {n} in {spec.name!r}; "
                        "inputs that share a named dimension must agree"
                    )
        feed[spec.name] = array
    unknown = sorted(set(arrays) - {spec.name for spec in specs})
    if unknown:
        raise BadInput(
            f"{where}: {', '.join(repr(k) for k in unknown[:5])} {'is' if len(unknown) == 1 else 'are'} no input of "
            f"the model (its inputs: {', '.join(spec.name for spec in specs)}); drop or rename the key"
        )
    return feed, filled


def _empty_cache(spec: InputSpec, arrays: Mapping[str, object], specs: list[InputSpec]) -> np.ndarray:
    """An empty key/value cache for ``spec``: the cache length 0, other dynamic sizes from the given arrays."""
    known: dict[str, int] = {}
    for other in specs:
        if other.name in arrays:
            for d, n in zip(other.dims, np.shape(arrays[other.name]), strict=False):
                if isinstance(d, str):
                    known.setdefault(d, int(n))
    cache_dims = _cache_dims(specs)
    dims = []
    for axis, d in enumerate(spec.dims):
        if isinstance(d, int):
            dims.append(d)
        elif isinstance(d, str) and d in known:
            dims.append(known[d])
        elif _is_cache_length(spec, axis, d, cache_dims):
            dims.append(0)
        else:
            dims.append(1)
    if 0 not in dims:
        dims[-2 if len(dims) >= 2 else 0] = 0
    return np.zeros(dims, dtype=spec.dtype)
