"""Gates on the validation: which output, which metric, which bound.

A classifier's user gates on top-1 agreement, an embedder's on cosine similarity, a regression on
relative L2 error; one bound for every output, or one per output (as Polygraphy spells per-output
tolerances: ``[OUTPUT=]X``).  Each :class:`Gate` reads its metric from the comparisons and says whether
it holds; :func:`violation` folds every gate into one number (at most 1 when all hold) for the
``--auto-exclude`` search.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import BadInput
from .compare import OutputComparison

__all__ = ["GATE_OPTIONS", "Gate", "parse_bounds", "violation"]

#: Option name -> (the comparison's metric, whether the bound is an upper one, words for messages).
GATE_OPTIONS = {
    "max_rel_error": ("rel_l2_error", True, "relative L2 error"),
    "min_cosine": ("cosine_similarity", False, "cosine similarity"),
    "min_top1_agreement": ("top1_agreement", False, "top-1 agreement"),
}


@dataclass(frozen=True)
class Gate:
    """One bound: ``option`` (``max_rel_error`` ...) on ``output`` (None: every output)."""

    option: str
    bound: float
    output: str | None = None

    @property
    def spelled_bound(self) -> object:
        """The bound as the caller wrote it: ``0.05`` (every output) or ``logits=0.05``."""
        return f"{self.output}={self.bound:g}" if self.output is not None else float(f"{self.bound:g}")

    @property
    def metric(self) -> str:
        return GATE_OPTIONS[self.option][0]

    @property
    def upper(self) -> bool:
        return GATE_OPTIONS[self.option][1]

    def value(self, comparisons: list[OutputComparison]) -> float | None:
        """The metric this gate reads: its output's, or the worst over all outputs (None: none has it)."""
        values = [
            getattr(c, self.metric)
            for c in comparisons
            if (self.output is None or c.name == self.output) and getattr(c, self.metric) is not None
        ]
        if not values:
            return None
        if any(math.isnan(v) for v in values):
            return math.nan
        return max(values) if self.upper else min(values)

    def holds(self, value: float | None) -> bool:
        if value is None or math.isnan(value):
            return False
        return value <= self.bound if self.upper else value >= self.bound

    def violation(self, value: float | None) -> float:
        """How far the value is from the bound: at most 1 when the gate holds (inf when it cannot be read)."""
        if value is None or math.isnan(value):
            return math.inf
        if self.upper:
            return value / self.bound if self.bound > 0 else (0.0 if value <= 0 else math.inf)
        room = 1.0 - self.bound
        return (1.0 - value) / room if room > 0 else (0.0 if value >= self.bound else math.inf)

    def as_dict(self, comparisons: list[OutputComparison]) -> dict[str, object]:
        value = self.value(comparisons)
        return {
            "option": self.option,
            "metric": self.metric,
            "output": self.output,
            "bound": self.bound,
            "value": value,
            "passed": self.holds(value),
        }

    def failure(self, value: float | None, spelled: str) -> str:
        """One line saying how the gate failed; ``spelled`` is the option with its value as the caller wrote it."""
        words = GATE_OPTIONS[self.option][2]
        where = f" of output {self.output!r}" if self.output is not None else ""
        if value is None:
            return f"validation failed: no {words} could be measured{where} for {spelled}"
        verb = "exceeds" if self.upper else "is below"
        return f"validation failed: {words}{where} {value:.4g} {verb} {spelled}"


def parse_bounds(option: str, given: object) -> list[Gate]:
    """Gates from an option's value: a number (every output), ``{output or None: number}``, or from the
    command line a list of ``[OUTPUT=]X`` strings.

    Raises:
        BadInput: A bound that is no number, or out of range (rel L2 >= 0, cosine and agreement in [-1, 1]).
    """
    if given is None:
        return []
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        items: list[tuple[str | None, object]] = [(None, given)]
    elif isinstance(given, Mapping):
        items = [(None if k is None else str(k), v) for k, v in given.items()]
    elif isinstance(given, (str, Sequence)):
        items = []
        for text in [given] if isinstance(given, str) else given:
            match = re.fullmatch(r"\s*(?:(.+)=)?\s*([^=\s]+)\s*", str(text))
            if not match:
                raise BadInput(f"{option} {text!r}: expected [OUTPUT=]NUMBER")
            items.append((match.group(1), match.group(2)))
    else:
        raise BadInput(f"{option}: expected a number, {{output: number}}, or [OUTPUT=]NUMBER strings")
    gates = []
    name = option.lstrip("-").replace("-", "_").rstrip("=")
    for output, raw in items:
        try:
            bound = float(raw)
        except (TypeError, ValueError):
            raise BadInput(f"{option} {raw!r}: not a number") from None
        low = 0.0 if GATE_OPTIONS[name][1] else -1.0
        if not (low <= bound and (GATE_OPTIONS[name][1] or bound <= 1.0)) or math.isnan(bound):
            rule = ">= 0" if GATE_OPTIONS[name][1] else "from -1 to 1"
            raise BadInput(f"{option} must be a number {rule}, got {raw}")
        gates.append(Gate(name, bound, output))
    return gates


def violation(gates: list[Gate], comparisons: list[OutputComparison]) -> float:
    """The largest violation of any gate (at most 1 when every gate holds)."""
    return max((g.violation(g.value(comparisons)) for g in gates), default=0.0)
