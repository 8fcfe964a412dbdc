"""The accuracy budget: which layers to leave dense so that the output stays within a bound.

Each candidate weight is pruned on its own (the others dense) and the model's
relative output error on the validation feeds measured: its *sensitivity*.
Then the most sensitive layers are left dense, as few as possible, until the
model with all the other layers pruned is within the bound (a binary search
over how many to leave dense, assuming more dense layers never hurt).

Each evaluation writes the model's structure to a temporary file and hands
onnxruntime the weights as arrays (:func:`~sparse24_onnx.runtime.sessions.open_model_session`),
so models over 2 GiB work too; the model object is left as it was.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..methods import Precomputed
from ..passes.prune_weights import PruneMethod, stored_tensor
from ..passes.weights import Declined, Status, WeightRecord, weight_records
from ..runtime.sessions import open_model_session, run_feeds
from ..validation.compare import OutputComparison, compare_runs, worst_error
from ..validation.gates import Gate, violation

__all__ = [
    "Budget",
    "fit_budget",
    "leave_sensitive_dense",
    "output_comparisons",
    "prune_candidates",
    "worst_finite",
]


@dataclass
class Budget:
    """What the search found.

    Attributes:
        sensitivity: Per weight, the output error with only that weight pruned.
        dense: Weights left dense, most sensitive first.
        error: Output error with every other weight pruned.
        evaluations: onnxruntime sessions created.
    """

    sensitivity: dict[str, float]
    dense: list[str]
    error: float
    evaluations: int
    #: What the numbers are: ``error`` (relative L2) or ``violation`` (of the gates: 1 is at the bound).
    scale: str = "error"

    @property
    def all_dense(self) -> bool:
        """Every weight had to stay dense: no pruning meets the bound (and there was a weight to prune)."""
        return bool(self.sensitivity) and len(self.dense) == len(self.sensitivity)

    def unmet(self, option: str, bound: str) -> str:
        """Why a budget that leaves every weight dense fails the run, in one line (option and bound as spelled)."""
        least = min(self.sensitivity.values())
        effect = (
            f"moves the output by {least:.3g}"
            if self.scale == "error"
            else f"takes the gates {least:.3g} times as far as they allow"
        )
        return (
            f"{option}: no weight can be pruned within {bound}: the least sensitive of the "
            f"{len(self.sensitivity)} weights {effect} when pruned alone"
        )


def fit_budget(
    model: ir.Model,
    records: list[WeightRecord],
    pruned: dict[str, np.ndarray],
    feeds: list[dict[str, np.ndarray]],
    reference: list[list[np.ndarray]],
    output_names: list[str],
    bound: float | list[Gate],
    progress: Callable[[str], None] | None = None,
) -> Budget:
    """Choose the fewest most-sensitive weights to leave dense so that every gate holds.

    Args:
        model: The model (its weights still dense).
        records: The weights that would be pruned.
        pruned: Each weight's pruned array, by name.
        feeds: Validation feeds; ``reference`` the dense model's outputs on them.
        output_names: The model's outputs, in order.
        bound: The largest relative L2 error allowed on any output, or the gates: with a single
            ``max_rel_error`` gate on every output the scores are relative L2 errors, else
            :func:`~sparse24_onnx.validation.gates.violation` (at most 1 when every gate holds).
        progress: Optional callback for progress lines.
    """
    evaluations = 0
    score, bound = _scorer(bound)
    scale = "error" if score is worst_finite else "violation"

    def error_with(names: set[str]) -> float:
        nonlocal evaluations
        evaluations += 1
        chosen = [r for r in records if r.name in names]
        return score(output_comparisons(model, chosen, pruned, feeds, reference, output_names))

    sensitivity = {}
    for i, record in enumerate(records):
        if progress:
            progress(f"sensitivity {i + 1}/{len(records)}: {record.name}")
        sensitivity[record.name] = error_with({record.name})
    order = sorted(sensitivity, key=lambda n: sensitivity[n], reverse=True)
    everything = set(order)
    errors = {0: error_with(everything)}
    if errors[0] <= bound:
        return Budget(sensitivity, [], errors[0], evaluations, scale)
    low, high = 0, len(order)  # low: known above the bound; high: all dense, error 0
    errors[high] = 0.0
    while high - low > 1:
        middle = (low + high) // 2
        errors[middle] = error_with(everything - set(order[:middle]))
        if progress:
            progress(f"budget: {middle} layers dense -> error {errors[middle]:.4g}")
        if errors[middle] <= bound:
            high = middle
        else:
            low = middle
    return Budget(sensitivity, order[:high], errors[high], evaluations, scale)


def _scorer(bound: float | list[Gate]) -> tuple[Callable[[list[OutputComparison]], float], float]:
    """How a trial is scored and the score's limit: relative L2 errors for one ``max_rel_error`` on every
    output (what the report's sensitivities have always been), else the gates' violation against 1."""
    if isinstance(bound, list) and len(bound) == 1 and bound[0].option == "max_rel_error" and not bound[0].output:
        bound = bound[0].bound
    if not isinstance(bound, list):
        return worst_finite, float(bound)
    gates = bound
    return (lambda comparisons: violation(gates, comparisons)), 1.0


def worst_finite(comparisons: list[OutputComparison]) -> float:
    """The worst relative L2 error of the outputs (inf when one is NaN: a trial that broke the model loses)."""
    worst = worst_error(comparisons)
    return math.inf if math.isnan(worst) else worst


def output_comparisons(
    model: ir.Model,
    records: list[WeightRecord],
    pruned: dict[str, np.ndarray],
    feeds: list[dict[str, np.ndarray]],
    reference: list[list[np.ndarray]],
    output_names: list[str],
) -> list[OutputComparison]:
    """How far each output of ``model`` moves with ``records``' weights replaced by their ``pruned`` values.

    ``pruned`` holds what a method returns (real values; quantized weights are
    put back on their grid).  The model is restored afterwards.
    """
    swapped = []
    try:
        for record in records:
            tensor = record.source.tensor
            swapped.append((record, tensor))
            record.source.replace(stored_tensor(record, tensor, pruned[record.name]))
        with tempfile.TemporaryDirectory(prefix="sparse24-trial-") as folder:
            session = open_model_session(model, Path(folder) / "model.onnx")
            outputs = run_feeds(session, feeds)
            del session
    finally:
        for record, tensor in swapped:
            record.source.replace(tensor)
    return compare_runs(output_names, reference, outputs)


def prune_candidates(
    model: ir.Model,
    candidates: list[WeightRecord],
    method: PruneMethod,
    verb: str,
    before_each: Callable[[], None] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Every candidate's pruned values and calibration note under ``method``, for a step that compares or
    measures whole-model trials before anything is written; ``model`` is left as it was.

    A sequential method (each layer captured on the model pruned before it) gets the candidates in graph
    order with each result swapped into ``model`` as it comes (and the originals put back at the end), as
    the pruning pass would.  ``before_each`` runs before each layer (a deadline check may raise there).
    """
    from ..passes.prune_weights import in_graph_order, stored_tensor
    from .progress import LayerProgress

    sequential = getattr(method, "sequential", False)
    results: dict[str, np.ndarray] = {}
    notes: dict[str, object] = {}
    swapped: list[tuple[WeightRecord, ir.TensorProtocol]] = []
    order = in_graph_order(model, candidates) if sequential else candidates
    progress = LayerProgress(verb, detail=lambda: getattr(method, "step", ""))
    try:
        for done, record in enumerate(order):
            if before_each is not None:
                before_each()
            progress(done, len(order), record)
            record.calibration = None
            try:
                pruned = method.prune(record, record.real(record.source.tensor.numpy()))
            except Declined:
                continue
            if not np.isfinite(pruned).all():
                continue  # the pruning pass skips it (NOT_FINITE): a trial must not count it either
            results[record.name] = pruned
            notes[record.name] = record.calibration
            if sequential:
                tensor = record.source.tensor
                swapped.append((record, tensor))
                record.source.replace(stored_tensor(record, tensor, pruned))
    finally:
        progress.finish()
        for record, tensor in reversed(swapped):
            record.source.replace(tensor)
    return results, notes


def leave_sensitive_dense(
    model: ir.Model,
    method: PruneMethod,
    feeds: list[dict[str, np.ndarray]],
    reference: list[list[np.ndarray]],
    output_names: list[str],
    bound: float | list[Gate],
) -> tuple[Budget, Precomputed]:
    """``--auto-exclude``: prune every candidate (with progress), measure sensitivities, and skip the fewest
    most sensitive ones (deliberately: ``check`` accepts them); the method comes back with the results reused."""
    log = logging.getLogger("sparse24_onnx")
    candidates = [r for r in weight_records(model) if r.status == Status.CANDIDATE]
    started = time.monotonic()
    results, notes = prune_candidates(model, candidates, method, "pruning for the sensitivity search")
    for record in candidates:
        record.calibration = notes.get(record.name)
    candidates = [r for r in candidates if r.name in results]
    log.info("measuring the sensitivity of %d layers", len(candidates))
    budget = fit_budget(model, candidates, results, feeds, reference, output_names, bound, progress=log.info)
    rank = {name: i + 1 for i, name in enumerate(budget.dense)}
    for record in candidates:
        if record.name in rank:
            record.skip(
                f"left dense by --auto-exclude: pruned alone it moves the output by "
                f"{budget.sensitivity[record.name]:.3g} (most sensitive {rank[record.name]} of {len(candidates)})",
                deliberate=True,
            )
    return budget, Precomputed(method, results, seconds=time.monotonic() - started)
