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
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..validation.feeds import parse_int_ranges, parse_shapes

__all__ = ["METHODS", "PruneOptions"]

#: Pruning methods: how the kept weights of each group of 4 are chosen.
METHODS = ("magnitude", "gradient", "wanda", "sparsegpt", "admm")
#: Methods that need calibration data.
CALIBRATED = ("wanda", "sparsegpt", "admm")
#: Storage formats of the pruned weights.
FORMATS = ("dense", "compressed")

Feeds = str | os.PathLike | Sequence[Mapping[str, np.ndarray]]


@dataclass
class PruneOptions:
    """Everything that steers one pruning run (see ``sparse24 optimize --help`` for each).

    ``seed``, ``num_feeds``, ``shapes`` and ``int_ranges`` describe generated
    validation inputs; giving them together with ``inputs``, or any validation
    option with ``validate=False``, is refused rather than silently ignored.
    """

    method: str = "magnitude"
    calibration: Feeds | None = None
    damp: float | None = None
    sequential: bool = False
    refit: bool | None = None
    tune: bool = True
    calibration_memory: float | None = None
    gradients: str | os.PathLike | Mapping[str, np.ndarray] | None = None
    exclude: Sequence[str] = ()
    tc_shapes: str = "strict"
    format: str = "dense"
    permute: bool = False
    permute_seconds: float = 60.0
    external_data: bool = False
    validate: bool = True
    inputs: Feeds | None = None
    shapes: Mapping[str, int | Sequence[int]] | Sequence[str] = field(default_factory=dict)
    int_ranges: Mapping[str | None, tuple[int, int]] | Sequence[str] = field(default_factory=dict)
    seed: int | None = None
    num_feeds: int | None = None
    max_rel_error: float | None = None
    auto_exclude: bool = False

    @classmethod
    def from_keywords(cls, options: Mapping[str, object]) -> PruneOptions:
        """Build from keyword arguments; an unknown keyword is bad input naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise BadInput(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**options)  # type: ignore[arg-type]

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
        """Refuse bad values and combinations, before any file is read.

        Raises:
            BadInput: With a one-line message naming the command-line option.
        """
        if self.method not in METHODS:
            raise BadInput(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.format not in FORMATS:
            raise BadInput(f"--format {self.format!r}: choose one of {', '.join(FORMATS)}")
        steering = self.sequential or self.refit is not None or self.damp is not None or not self.tune
        if steering and not self.calibrated:
            raise BadInput("--sequential, --refit, --damp and --no-tune go with --method wanda, sparsegpt or admm")
        if self.calibrated and self.calibration is None:
            raise BadInput(f"--method {self.method} needs --calibration PATH (.npz keyed by input name, or a folder)")
        if self.calibration is not None and not self.calibrated:
            raise BadInput("--calibration is used with --method wanda, sparsegpt or admm")
        if self.method == "gradient" and self.gradients is None:
            raise BadInput("--method gradient needs --gradients PATH.npz (gradients keyed by initializer name)")
        if self.gradients is not None and self.method != "gradient":
            raise BadInput("--gradients is only used with --method gradient")
        if self.damp is not None and not (isinstance(self.damp, (int, float)) and 0 <= self.damp < 10):
            raise BadInput("--damp must be a fraction of the Hessian's mean diagonal, in [0, 10)")
        if self.calibration_memory is not None and not self.calibration_memory > 0:
            raise BadInput("--calibration-memory must be a positive number of GiB")
        if self.max_rel_error is not None and not self.max_rel_error >= 0:
            raise BadInput("--max-rel-error must be a number >= 0")
        if not self.permute_seconds > 0:
            raise BadInput("--permute-seconds must be a positive number")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise BadInput(f"--seed {self.seed}: must be a whole number from 0 to 2**63 - 1")
        if self.num_feeds is not None and self.num_feeds < 1:
            raise BadInput("--num-feeds must be at least 1")
        self._check_combinations()
        for pattern in self.exclude:
            try:
                re.compile(pattern)
            except re.error as error:
                raise BadInput(f"--exclude {pattern!r}: not a regular expression ({error})") from None
        self.shape_sizes  # noqa: B018  (parses, or raises BadInput)
        self.integer_ranges  # noqa: B018
        for option, value in (("--inputs", self.inputs), ("--calibration", self.calibration)):
            if isinstance(value, (str, os.PathLike)):
                _check_feed_path(option, Path(value))
            elif value is not None and not _is_feed_list(value):
                raise BadInput(f"{option}: expected a path or a list of {{input name: array}} dicts")
        if isinstance(self.gradients, (str, os.PathLike)):
            path = Path(self.gradients)
            if not path.is_file():
                raise BadInput(f"--gradients {path}: no such file")

    def _check_combinations(self) -> None:
        generated = {
            "--shape": bool(self.shapes),
            "--int-range": bool(self.int_ranges),
            "--seed": self.seed is not None,
            "--num-feeds": self.num_feeds is not None,
        }
        given = [name for name, on in generated.items() if on]
        if not self.validate:
            ignored = [*given, *(["--inputs"] if self.inputs is not None else [])]
            ignored += [name for name, on in (("--max-rel-error", self.max_rel_error is not None),) if on]
            if ignored:
                raise BadInput(f"--no-validate with {', '.join(ignored)}: these only steer validation; drop one")
        elif self.inputs is not None and given:
            raise BadInput(
                f"--inputs with {', '.join(given)}: those describe generated inputs, which --inputs replaces; drop one"
            )
        if self.auto_exclude and self.max_rel_error is None:
            raise BadInput("--auto-exclude needs --max-rel-error (and validation)")


def _check_feed_path(option: str, path: Path) -> None:
    if path.is_dir():
        if not any(path.glob("*.npz")):
            raise BadInput(f"{option} {path}: folder holds no .npz files")
    elif not path.is_file():
        raise BadInput(f"{option} {path}: no such file or folder")
    elif not os.access(path, os.R_OK):
        raise BadInput(f"{option} {path}: not readable")


def _is_feed_list(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, (str, bytes))
        and len(value) > 0
        and all(isinstance(feed, Mapping) for feed in value)
    )
