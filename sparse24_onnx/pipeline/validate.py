"""The validation steps of a pruning run: the original model's outputs on the feeds, then the pruned
model's, compared, with a verdict that knows what it witnessed.

:func:`run_reference` runs the original (before pruning, so its session can be freed);
:func:`validate_output` runs the staged OUT and returns a :class:`ValidationOutcome`, whose
:meth:`~ValidationOutcome.as_dict` is the report's ``validation`` entry and whose ``failure`` says,
in one line, why the gate failed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInput
from ..passes.weights import Status, WeightRecord
from ..runtime.feeds import FeedSet
from ..runtime.sessions import open_session, run_feeds, session_provider
from ..validation.compare import OutputComparison, compare_runs, empty_outputs, worst_error
from ..validation.gates import Gate
from .options import PruneOptions

__all__ = ["Reference", "ValidationOutcome", "run_reference", "validate_output"]

log = logging.getLogger("sparse24_onnx")


@dataclass
class Reference:
    """The validation feeds and the original model's outputs on them."""

    feeds: FeedSet
    output_names: list[str]
    outputs: list[list[np.ndarray]]
    provider: str


@dataclass
class ValidationOutcome:
    """What the comparison found, and whether the gate (if any) passed.

    Attributes:
        comparisons: Per compared output, how far it moved.
        worst: The worst relative L2 error (NaN if an output became NaN).
        blind: Why the comparison cannot have seen the pruning (empty when it could).
        failure: Why a gate failed, in one line (None: all held, or there is none).
        gates: The gates (``max_rel_error``, ``min_cosine``, ``min_top1_agreement``; any output or one).
        bound: The ``max_rel_error`` bound on every output, None for none (the report's ``max_rel_error``).
    """

    reference: Reference
    comparisons: list[OutputComparison]
    worst: float
    gates: list[Gate]
    bound: float | None
    blind: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    failure: str | None = None

    @property
    def passed(self) -> bool | None:
        """True or False with a gate, None without one."""
        return None if not self.gates else self.failure is None

    def fail(self, reason: str) -> None:
        """Fail the gate for a reason found outside the comparison (the first reason stays)."""
        self.failure = self.failure or reason

    def as_dict(self) -> dict[str, object]:
        """The report's ``validation`` entry (fields documented in docs/reference.md)."""
        feeds = self.reference.feeds
        return {
            "feeds": len(feeds),
            "source": feeds.source,
            "inputs": feeds.inputs,
            "provider": self.reference.provider,
            "max_rel_error": self.bound,
            "worst_rel_l2_error": self.worst,
            "witnessed": not self.blind,
            "passed": self.passed,
            "failure": self.failure,
            "gates": [gate.as_dict(self.comparisons) for gate in self.gates],
            "warnings": [*feeds.warnings, *self.warnings],
            "outputs": [c.as_dict() for c in self.comparisons],
            "not_compared": self.not_compared,
        }


def run_reference(session, feeds: FeedSet | None) -> Reference | None:
    """Run the original model on the validation feeds (what they are said first, input by input).

    Raises:
        BadInput: A feed with NaN or Inf inputs makes the original's outputs non-finite.
    """
    if feeds is None:
        return None
    for line in feeds.summary():
        log.info("%s", line)
    for line in feeds.warnings:  # before the run: what was assumed is known now
        log.warning("%s", line)
    log.info("running the original model in onnxruntime on %d feed(s)", len(feeds))
    outputs = run_feeds(session, feeds.feeds, hint=feeds.hint)
    names = [o.name for o in session.get_outputs()]
    _refuse_non_finite(names, outputs, feeds)
    return Reference(feeds, names, outputs, session_provider(session))


def validate_output(
    path: Path, records: list[WeightRecord], reference: Reference, options: PruneOptions
) -> ValidationOutcome:
    """Run the staged OUT at ``path`` on the reference's feeds and compare (warnings logged)."""
    log.info("running the pruned model in onnxruntime")
    session = open_session(path, role="output")
    feeds = reference.feeds
    candidate = run_feeds(session, feeds.feeds, hint=feeds.hint)
    del session
    comparisons = compare_runs(reference.output_names, reference.outputs, candidate)
    outcome = ValidationOutcome(reference, comparisons, worst_error(comparisons), options.gates, options.bound)
    outcome.not_compared = empty_outputs(reference.output_names, reference.outputs)
    if outcome.not_compared and comparisons:
        shown = ", ".join(repr(name) for name in outcome.not_compared[:5])
        more = " ..." if len(outcome.not_compared) > 5 else ""
        outcome.warnings.append(f"{len(outcome.not_compared)} output(s) empty for every feed were not compared "
                                f"({shown}{more})")  # fmt: skip
    outcome.blind = _witnessed_nothing(reference, candidate, records, comparisons)
    outcome.warnings += outcome.blind
    worst = outcome.worst
    if worst > 1 or math.isnan(worst):
        outcome.warnings.append(
            f"the worst output error is {worst:.3g}: the pruned model's output no longer resembles the original's; "
            + _remedy(options)
        )
    if outcome.gates and outcome.blind:
        outcome.fail(f"validation witnessed nothing ({outcome.blind[0]}); " + _witness_hint(feeds))
    for gate in outcome.gates:
        value = gate.value(comparisons)
        if not gate.holds(value):
            outcome.fail(gate.failure(value, options.given(gate.option, gate.spelled_bound)))
    for line in outcome.warnings:
        log.warning("%s", line)
    return outcome


def _witnessed_nothing(
    reference: Reference,
    candidate: list[list[np.ndarray]],
    records: list[WeightRecord],
    comparisons: list[OutputComparison],
) -> list[str]:
    """Why the comparison cannot have seen the pruning, one line each (empty when it could)."""
    problems = []
    names = reference.output_names
    if not comparisons:
        problems.append("the model has no non-empty numeric output to compare")
    changed = any(r.status == Status.PRUNED and r.metrics is not None and r.metrics.pruned_count for r in records)
    float_outputs = [
        i for i, _ in enumerate(names) if all(np.asarray(run[i]).dtype.kind == "f" for run in reference.outputs)
    ]
    if changed and float_outputs and not problems:
        identical = all(
            _same_bits(np.asarray(ref[i]), np.asarray(cand[i]))
            for ref, cand in zip(reference.outputs, candidate, strict=True)
            for i in float_outputs
        )
        if identical:
            problems.append(
                "weights were pruned but every float output is bit-identical to the original's: these inputs "
                "do not reach the pruned layers (masked or zero inputs?)"
            )
    return problems


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def _refuse_non_finite(names: list[str], outputs: list[list[np.ndarray]], feeds: FeedSet) -> None:
    """Refuse feeds with NaN or Inf inputs on which the original model's outputs are not finite either.

    Non-finite *inputs* are fine when the outputs are finite (a ``-inf`` additive attention mask, say);
    a model whose own weights make an output non-finite is compared as it is (equal values count as equal).
    """
    for index, (feed, run) in enumerate(zip(feeds.feeds, outputs, strict=True)):
        if all(np.isfinite(a).all() for a in feed.values() if isinstance(a, np.ndarray) and a.dtype.kind == "f"):
            continue
        for name, array in zip(names, run, strict=False):
            if isinstance(array, np.ndarray) and array.dtype.kind == "f" and not np.isfinite(array).all():
                raise BadInput(
                    f"validation feed {index} ({feeds.source}) holds NaN or Inf, and output {name!r} of the original "
                    "model is then not finite either, so output errors on it mean nothing; " + feeds.hint
                )


def _witness_hint(feeds: FeedSet) -> str:
    """What to do when the validation saw nothing: depends on where the feeds came from."""
    if feeds.source.startswith("generated"):
        return "pass real inputs with --inputs"
    return "these inputs do not exercise the pruned layers: feed inputs that reach them"


def _remedy(options: PruneOptions) -> str:
    """What to try when the output error is above 1, given what the run already did."""
    if not options.calibrated:
        return "try a calibrated method (--method sparsegpt --calibration ...) or --auto-exclude"
    return (
        "bring more (and more varied) calibration data, leave the most sensitive layers dense with "
        "--auto-exclude --max-rel-error X, or --exclude them by name"
    )
