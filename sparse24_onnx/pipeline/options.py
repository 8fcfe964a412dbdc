"""The options of :func:`~sparse24_onnx.prune_model`, checked before any model is read.

Each option mirrors a command-line option of ``sparse24 optimize`` (``--tc-shapes``
is ``tc_shapes``, ``--no-validate`` is ``validate=False``).  Feeds (``inputs``,
``calibration``) are a path (a ``.npz`` keyed by input name, or a folder of them)
or, from Python, a list of ``{input name: array}`` dicts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..choices import ACTIVATION_CALIBRATIONS, CALIBRATED, FORMATS, METHODS, QUANTIZE, RECOMMENDED, ROWS_PER_FEATURE
from ..errors import BadInput
from ..runtime.feeds import parse_int_ranges, parse_shapes
from ..runtime.loaders import IMAGE_SUFFIXES
from ..validation.gates import GATE_OPTIONS, Gate, parse_bounds

__all__ = ["METHODS", "PruneOptions"]

Feeds = str | os.PathLike | Sequence[Mapping[str, np.ndarray]]
#: A gate's bound: one number for every output, ``{output (None: every output): number}``, or from the
#: command line ``[OUTPUT=]NUMBER`` strings.
Bounds = float | Mapping[str | None, float] | Sequence[str]

#: Command-line flags whose spelling is not ``--`` + the option's name with dashes.
CLI_FLAGS = {
    "validate": "--no-validate",
    "tune": "--no-tune",
    "shapes": "--shape",
    "int_ranges": "--int-range",
}


@dataclass
class PruneOptions:
    """Everything that steers one pruning run (see ``sparse24 optimize --help`` for each).

    ``seed``, ``num_feeds``, ``shapes`` and ``int_ranges`` describe generated
    validation inputs; giving them together with ``inputs``, or any validation
    option with ``validate=False``, is refused rather than silently ignored.
    """

    method: str | None = None
    calibration: Feeds | None = None
    damp: float | None = None
    sequential: bool = False
    correct: bool = False
    refit: bool | None = None
    tune: bool = True
    calibration_memory: float | None = None
    rows_per_feature: int | None = None
    quantize: str | None = None
    activation_calibration: str = "minmax"
    tokenizer: str | os.PathLike | None = None
    seq_len: int | None = None
    image_size: str | tuple[int, int] | None = None
    mean: str | Sequence[float] | None = None
    std: str | Sequence[float] | None = None
    layout: str = "NCHW"
    channels: str = "RGB"
    image_dtype: str = "float32"
    gradients: str | os.PathLike | Mapping[str, np.ndarray] | None = None
    exclude: Sequence[str] = ()
    tc_shapes: str = "strict"
    format: str = "dense"
    permute: bool = False
    permute_seconds: float | None = None
    external_data: bool = False
    validate: bool = True
    inputs: Feeds | None = None
    shapes: Mapping[str, int | Sequence[int]] | Sequence[str] = field(default_factory=dict)
    int_ranges: Mapping[str | None, tuple[int, int]] | Sequence[str] = field(default_factory=dict)
    seed: int | None = None
    num_feeds: int | None = None
    max_rel_error: Bounds | None = None
    min_cosine: Bounds | None = None
    min_top1_agreement: Bounds | None = None
    auto_exclude: bool = False
    report: str | os.PathLike | None = None
    #: Set by :meth:`check`: the method was chosen for the caller (calibration given, no method named).
    method_chosen: bool = field(default=False, repr=False)
    #: How messages name options: ``python`` (``max_rel_error=``) or ``cli`` (``--max-rel-error``).
    spelling: str = field(default="python", repr=False)

    @classmethod
    def from_keywords(cls, options: Mapping[str, object], base: PruneOptions | None = None) -> PruneOptions:
        """Build from keyword arguments (over ``base``'s values when given); an unknown keyword is bad input
        naming the known ones."""
        known = {f.name for f in fields(cls) if f.repr}
        unknown = sorted(set(options) - known - {"spelling"})
        if unknown:
            raise BadInput(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if base is not None:
            return replace(base, **options)  # type: ignore[arg-type]
        return cls(**options)  # type: ignore[arg-type]

    def spell(self, name: str) -> str:
        """How an option is named to this caller: ``--max-rel-error`` on the command line, ``max_rel_error=``
        from Python."""
        if self.spelling == "cli":
            return CLI_FLAGS.get(name, "--" + name.replace("_", "-"))
        return f"{name}="

    def given(self, name: str, value: object, *, quote: bool = False) -> str:
        """An option with its value as this caller wrote it: ``--method admm`` or ``method='admm'``."""
        if self.spelling == "cli":
            return f"{self.spell(name)} {value!r}" if quote else f"{self.spell(name)} {value}"
        return f"{name}={value!r}"

    # ------------------------------------------------------------------ derived values

    @property
    def calibrated(self) -> bool:
        return self.method in CALIBRATED

    @property
    def shape_sizes(self) -> dict[str, tuple[int, ...]]:
        """``shapes`` as ``{input or dimension name: sizes}``."""
        if isinstance(self.shapes, Mapping):
            return {
                str(k): (int(v),) if isinstance(v, (int, np.integer)) else tuple(int(d) for d in v)
                for k, v in self.shapes.items()
            }
        return parse_shapes(list(self.shapes))

    @property
    def integer_ranges(self) -> tuple[tuple[int, int] | None, dict[str, tuple[int, int]]]:
        """``(range for every integer input or None, {input name: range})``."""
        if isinstance(self.int_ranges, Mapping):
            default = self.int_ranges.get(None)
            ranges = {str(k): (int(v[0]), int(v[1])) for k, v in self.int_ranges.items() if k is not None}
            for name, (low, high) in ranges.items():
                if low >= high:
                    raise BadInput(f"int_ranges {name}={low}:{high}: LOW must be below HIGH")
            return (None if default is None else (int(default[0]), int(default[1]))), ranges
        return parse_int_ranges(list(self.int_ranges))

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """Refuse bad values and combinations, before any file is read; settle the method.

        Raises:
            BadInput: With a one-line message naming the option as the caller spells it.
        """
        o = self.spell
        if self.method is None:
            self.method = RECOMMENDED if self.calibration is not None else "magnitude"
            self.method_chosen = self.calibration is not None
        if self.method not in METHODS:
            raise BadInput(f"{self.given('method', self.method, quote=True)}: choose one of {', '.join(METHODS)}")
        if self.format not in FORMATS:
            raise BadInput(f"{self.given('format', self.format, quote=True)}: choose one of {', '.join(FORMATS)}")
        steering = [
            o(name)
            for name, on in (
                ("sequential", self.sequential),
                ("correct", self.correct),
                ("refit", self.refit is not None),
                ("damp", self.damp is not None),
                ("tune", not self.tune),
            )
            if on
        ]
        if steering and not self.calibrated:
            raise BadInput(f"{', '.join(steering)} go(es) with {o('method')} wanda, sparsegpt or admm")
        if self.calibrated and self.calibration is None:
            raise BadInput(
                f"{self.given('method', self.method)} needs {o('calibration')} (feeds: a .npz keyed by input name, "
                "a folder of them, or a loader)"
            )
        if self.calibration is not None and not self.calibrated:
            raise BadInput(f"{o('calibration')} is used with {o('method')} wanda, sparsegpt or admm")
        if self.method == "gradient" and self.gradients is None:
            raise BadInput(
                f"{self.given('method', 'gradient')} needs {o('gradients')} (a .npz of gradients keyed by weight name)"
            )
        if self.gradients is not None and self.method != "gradient":
            raise BadInput(f"{o('gradients')} is only used with {self.given('method', 'gradient')}")
        if self.damp is not None and not (isinstance(self.damp, (int, float)) and 0 <= self.damp < 10):
            raise BadInput(f"{o('damp')} must be a fraction of the Hessian's mean diagonal, in [0, 10)")
        if self.calibration_memory is not None and not self.calibration_memory > 0:
            raise BadInput(f"{o('calibration_memory')} must be a positive number of GiB")
        if self.correct:
            self.sequential = True  # the correction fits each layer on the model pruned before it
        if self.correct and self.permute:
            raise BadInput(
                f"{o('correct')} with {o('permute')}: not supported together yet (the correction's model-level check "
                "and the channel order's would each prune the model twice); drop one"
            )
        self._check_quantize()
        if self.rows_per_feature is not None:
            if (
                isinstance(self.rows_per_feature, bool)
                or not isinstance(self.rows_per_feature, int)
                or (self.rows_per_feature < 0)
            ):
                raise BadInput(f"{o('rows_per_feature')} must be a whole number, 0 or more (0: every row)")
            if self.calibration is None:
                raise BadInput(f"{o('rows_per_feature')} steers {o('calibration')}, which was not given")
        self.gates  # noqa: B018  (parses the bounds, or raises BadInput)
        if self.permute_seconds is not None and not self.permute:
            raise BadInput(f"{o('permute_seconds')} caps {o('permute')}, which was not asked for; drop one")
        if self.permute_seconds is not None and not self.permute_seconds > 0:
            raise BadInput(f"{o('permute_seconds')} must be a positive number")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise BadInput(f"{self.given('seed', self.seed)}: must be a whole number from 0 to 2**63 - 1")
        if self.num_feeds is not None and self.num_feeds < 1:
            raise BadInput(f"{o('num_feeds')} must be at least 1")
        self._check_combinations()
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as error:
                raise BadInput(
                    f"{self.given('exclude', pattern, quote=True)}: not a regular expression ({error})"
                ) from None
        self.shape_sizes  # noqa: B018  (parses, or raises BadInput)
        self.integer_ranges  # noqa: B018
        for name in ("inputs", "calibration"):
            value = getattr(self, name)
            if isinstance(value, (str, os.PathLike)):
                _check_feed_path(o(name), Path(value))
            elif value is not None and not _is_feed_source(value):
                raise BadInput(
                    f"{o(name)}: expected a path, a list or iterable of {{input name: array}} dicts, or an object "
                    "with get_next() (onnxruntime's CalibrationDataReader)"
                )
        if isinstance(self.gradients, (str, os.PathLike)):
            path = Path(self.gradients)
            if not path.is_file():
                raise BadInput(f"{o('gradients')} {path}: no such file")
        self._check_loaders()

    def _check_loaders(self) -> None:
        """The built-in text and image loaders' options: given together with what they read, and valid."""
        o = self.spell
        if self.tokenizer is not None and not Path(self.tokenizer).is_file():
            raise BadInput(f"{self.given('tokenizer', self.tokenizer)}: no such file (a tokenizer.json)")
        if self.seq_len is not None and (self.tokenizer is None or not self.seq_len >= 1):
            raise BadInput(f"{o('seq_len')} is a positive number of tokens, used with {o('tokenizer')}")
        image_options = [
            o(name)
            for name, default in (("mean", None), ("std", None), ("layout", "NCHW"), ("channels", "RGB"),
                                  ("image_dtype", "float32"))
            if getattr(self, name) != default
        ]  # fmt: skip
        if image_options and self.image_size is None:
            raise BadInput(f"{', '.join(image_options)} describe images: give {o('image_size')} HxW too")
        recipe = self.image_recipe
        if recipe is not None:
            recipe.check()
        if self.tokenizer is None and self.image_size is None:
            return
        texts = [n for n in ("inputs", "calibration") if _is_plain_file(getattr(self, n))]
        folders = [n for n in ("inputs", "calibration") if _is_folder(getattr(self, n))]
        if self.tokenizer is not None and not texts:
            raise BadInput(f"{o('tokenizer')} reads text files: give {o('calibration')} or {o('inputs')} a .txt file")
        if self.image_size is not None and not folders:
            raise BadInput(f"{o('image_size')} reads image folders: give {o('calibration')} or {o('inputs')} one")

    @property
    def image_recipe(self):
        """The image preprocessing (:class:`~sparse24_onnx.runtime.loaders.ImageRecipe`), or None."""
        if self.image_size is None:
            return None
        from ..runtime.loaders import ImageRecipe, parse_size

        size = parse_size(self.image_size) if isinstance(self.image_size, str) else tuple(self.image_size)
        return ImageRecipe(
            size,
            _numbers(self.mean, "mean", (0.0,)),
            _numbers(self.std, "std", (1.0,)),
            self.layout,
            self.channels,
            self.image_dtype,
        )

    @property
    def gates(self) -> list[Gate]:
        """The validation gates (``max_rel_error``, ``min_cosine``, ``min_top1_agreement``), parsed."""
        return [gate for name in GATE_OPTIONS for gate in parse_bounds(self.spell(name), getattr(self, name))]

    @property
    def bound(self) -> float | None:
        """The ``max_rel_error`` bound on every output (the report's ``max_rel_error``), if given."""
        return next((g.bound for g in self.gates if g.option == "max_rel_error" and g.output is None), None)

    @property
    def rows_cap(self) -> int:
        """Most rows per input feature ``X^T X`` takes (``rows_per_feature``, default :data:`ROWS_PER_FEATURE`;
        0: every row)."""
        return ROWS_PER_FEATURE if self.rows_per_feature is None else self.rows_per_feature

    @property
    def cap_seconds(self) -> float:
        """The permutation phase's time cap (``permute_seconds``, default 60)."""
        return 60.0 if self.permute_seconds is None else float(self.permute_seconds)

    def _check_quantize(self) -> None:
        o = self.spell
        if self.activation_calibration not in ACTIVATION_CALIBRATIONS:
            raise BadInput(
                f"{self.given('activation_calibration', self.activation_calibration, quote=True)}: choose one of "
                f"{', '.join(ACTIVATION_CALIBRATIONS)}"
            )
        if self.quantize is None:
            if self.activation_calibration != ACTIVATION_CALIBRATIONS[0]:
                raise BadInput(f"{o('activation_calibration')} steers {o('quantize')}, which was not given")
            return
        if self.quantize not in QUANTIZE:
            raise BadInput(f"{self.given('quantize', self.quantize, quote=True)}: choose one of {', '.join(QUANTIZE)}")
        if not self.calibrated:
            raise BadInput(
                f"{o('quantize')} needs a calibrated method and {o('calibration')}: the activations' scales come "
                "from the calibration feeds, and SparseGPT/ADMM round the kept weights jointly"
            )
        if self.permute:
            raise BadInput(
                f"{o('quantize')} with {o('permute')}: not supported together yet (the channel permutation does not "
                "reorder the per-channel scales of quantized weights); drop one"
            )

    def _check_combinations(self) -> None:
        o = self.spell
        generated = {
            o("shapes"): bool(self.shapes),
            o("int_ranges"): bool(self.int_ranges),
            o("seed"): self.seed is not None,
            o("num_feeds"): self.num_feeds is not None,
        }
        given = [name for name, on in generated.items() if on]
        if not self.validate:
            ignored = [*given, *([o("inputs")] if self.inputs is not None else [])]
            ignored += [o(name) for name in GATE_OPTIONS if getattr(self, name) is not None]
            if ignored:
                raise BadInput(f"{o('validate')} with {', '.join(ignored)}: these only steer validation; drop one")
        elif self.inputs is not None and given:
            raise BadInput(
                f"{o('inputs')} with {', '.join(given)}: those describe generated inputs, which {o('inputs')} "
                "replaces; drop one"
            )
        if self.auto_exclude and not self.gates:
            raise BadInput(
                f"{o('auto_exclude')} needs a gate to meet: {o('max_rel_error')}, {o('min_cosine')} or "
                f"{o('min_top1_agreement')} (and validation)"
            )


def _is_plain_file(value: object) -> bool:
    """A path to a file that is neither an .npz nor a loader script: text for the tokenizer."""
    return (
        isinstance(value, (str, os.PathLike))
        and Path(value).is_file()
        and Path(value).suffix.lower() not in (".npz", ".py")
    )


def _is_folder(value: object) -> bool:
    return isinstance(value, (str, os.PathLike)) and Path(value).is_dir()


def _numbers(value: str | Sequence[float] | None, option: str, default: tuple[float, ...]) -> tuple[float, ...]:
    if value is None:
        return default
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise BadInput(f"--{option} {value!r}: expected numbers such as 0.485,0.456,0.406") from None


def _check_feed_path(option: str, path: Path) -> None:
    script = re.fullmatch(r"(.+\.py)(?::[A-Za-z_]\w*)?", str(path))
    if script:  # a loader script (file.py[:function]): only the file is checked before the run
        if not Path(script.group(1)).is_file():
            raise BadInput(f"{option} {path}: no such loader script {script.group(1)}")
        return
    if path.is_dir():
        if not any(path.glob("*.npz")) and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
            raise BadInput(f"{option} {path}: folder holds no .npz files (nor images, for --image-size)")
    elif not path.is_file():
        raise BadInput(f"{option} {path}: no such file or folder")
    elif not os.access(path, os.R_OK):
        raise BadInput(f"{option} {path}: not readable")


def _is_feed_source(value: object) -> bool:
    """A list of feed dicts, any other iterable of them (a generator), or a ``get_next()`` reader."""
    if isinstance(value, (str, bytes, Mapping)):
        return False
    if callable(getattr(value, "get_next", None)) or callable(value):
        return True
    if isinstance(value, Sequence):
        return len(value) > 0 and all(isinstance(feed, Mapping) for feed in value)
    return hasattr(value, "__iter__")
