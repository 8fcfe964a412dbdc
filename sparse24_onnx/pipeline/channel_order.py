"""``--permute``: search a channel order per layer pair, then keep it only where the data says it helps.

Three steps, all inside one wall-clock cap (``permute_seconds``):

1. the search (:class:`~sparse24_onnx.passes.PermuteChannels`), given :data:`SEARCH_SHARE` of the cap;
2. with calibration statistics, each permuted layer is pruned in both orders and put back where its
   calibrated error is not lower;
3. the model-level guard: the whole model is pruned in both orders and the order whose outputs move less
   on the guard's feeds is kept (held-out calibration feeds, or the validation feeds when there is no
   calibration); the method then reuses that pruning.

When the cap runs out, what was not evaluated is put back (step 2) or the guard is abandoned (step 3),
and a warning says so: the cap holds, and nothing unverified is claimed.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx_ir as ir

from ..calibration.capture import permute_stats
from ..methods import CalibratedMethod, Precomputed
from ..modelio.load import needs_external_data
from ..passes import PermuteChannels
from ..passes.prune_weights import PruneMethod
from ..passes.weights import Status, WeightRecord, weight_records
from .guard import Guard
from .layer_budget import output_comparisons, prune_candidates

__all__ = ["SEARCH_SHARE", "Guard", "choose_channel_order"]  # Guard: re-exported from .guard

log = logging.getLogger("sparse24_onnx")

#: Share of the time cap the search itself may use; the rest is for checking what it found.
SEARCH_SHARE = 0.5


class _OutOfTime(Exception):
    """The phase's deadline passed in the middle of a step."""


def choose_channel_order(
    model: ir.Model,
    method: PruneMethod,
    seconds: float,
    guard: Guard | None,
    warnings: list[str],
    clock=time.monotonic,
) -> PruneMethod:
    """Permute channels where it helps (see the module docstring); the method, with results reused if any.

    Args:
        seconds: Wall-clock cap of the whole phase.
        guard: Feeds for the model-level check (None: none available; said in ``warnings``).
        warnings: Where to add what the run must say (the cap cutting a step short ...).
        clock: Seconds, monotonic (a test can pass its own).
    """
    deadline = clock() + seconds
    stats = method.stats if isinstance(method, CalibratedMethod) else None
    log.info("searching channel permutations (at most %g s for the whole phase)", seconds)
    permute = PermuteChannels(
        seconds=seconds * SEARCH_SHARE,
        importance=_calibrated_importance(stats) if stats is not None else None,
        permuted=_stats_follow(stats) if stats is not None else None,
    )
    changed = permute(model).weights
    if stats is not None:
        undone = late = 0
        for record in changed:
            if clock() > deadline:
                _put_back(permute, record, "time cap reached before its calibrated error could be compared")
                late += 1
            else:
                undone += _keep_if_better(method, permute, record)
        log.info("permuted the channels before %d weights (%d put back)", len(changed) - undone - late, undone + late)
        if late:
            warnings.append(
                f"--permute: the time cap ({seconds:g} s) ran out before {late} permuted layer(s) could be checked "
                "against calibration; they were put back in their original order"
            )
    else:
        log.info("permuted the channels before %d weights", len(changed))
    if not permute.applied:
        return method
    if guard is None:
        warnings.append(
            "--permute: no calibration or validation data to check the permutations against, so they were kept "
            "where they retain more |w| (pass --calibration, or validate, to check them on data)"
        )
        return method
    if needs_external_data(model):
        warnings.append(
            "--permute: the model is too large to prune in both channel orders in memory, so only each "
            "layer's own score decided"
        )
        return method
    try:
        return _better_order(model, method, permute, guard, deadline, clock)
    except _OutOfTime:
        warnings.append(
            f"--permute: the time cap ({seconds:g} s) ran out during the model-level check on {guard.label}; "
            "the permutations were kept on each layer's own score (raise --permute-seconds to check them)"
        )
        return method


def _calibrated_importance(stats):
    """Wanda's ``|w_ij| * ||x_j||`` for a consumer whose input statistics were captured (else None)."""

    def importance(record: WeightRecord, weights: np.ndarray) -> np.ndarray | None:
        found = stats.get(record.name)
        if found is None or found.sq_norm.shape[0] != weights.shape[record.axis]:
            return None
        shape = [1] * weights.ndim
        shape[record.axis] = found.sq_norm.shape[0]
        return np.abs(weights.astype(np.float32)) * np.sqrt(found.sq_norm).reshape(shape).astype(np.float32)

    return importance


def _stats_follow(stats):
    """Keep a consumer's input statistics in the order of its permuted channels."""

    def permuted(record: WeightRecord, perm: np.ndarray) -> None:
        found = stats.get(record.name)
        if found is not None:
            stats[record.name] = permute_stats(found, perm)

    return permuted


def _put_back(permute: PermuteChannels, record: WeightRecord, note: str) -> None:
    permute.undo(record)
    record.permutation["kept"] = False
    record.permutation["note"] = f"original order kept: {note}"


def _keep_if_better(method: CalibratedMethod, permute: PermuteChannels, record: WeightRecord) -> bool:
    """Put a layer's channels back in order when, calibrated, the permuted layer is not better; True if so."""
    _, perm = permute.applied[record.name]
    stats = method.stats.get(record.name)
    if stats is None:
        return False
    weights = record.source.tensor.numpy()
    inverse = np.argsort(perm)
    permuted = method.evaluate(record, weights, stats)
    original = method.evaluate(record, np.take(weights, inverse, axis=record.axis), permute_stats(stats, inverse))
    record.permutation["calibrated_error"] = {"permuted": permuted, "original": original}
    if permuted is None or original is None or permuted < original:
        return False
    _put_back(permute, record, "calibrated, the permuted layer's error was not lower")
    return True


def _better_order(
    model: ir.Model, method: PruneMethod, permute: PermuteChannels, guard: Guard, deadline: float, clock
) -> PruneMethod:
    """Prune the whole model with and without the permutations; keep the order whose outputs move less.

    Returns the method with the chosen order's results precomputed.  Raises :class:`_OutOfTime`
    (with every permutation back in place) when the deadline passes first.
    """
    started = time.monotonic()
    reference, names = guard.outputs(model)
    candidates = [r for r in weight_records(model) if r.status == Status.CANDIDATE]
    trials = {}
    undone: list = []
    for order in ("permuted", "original"):
        if order == "original":
            undone = [permute.undo(record) for record in candidates if record.name in permute.applied]

        def in_time() -> None:
            if clock() > deadline:
                raise _OutOfTime

        try:
            results, notes = prune_candidates(
                model, candidates, method, f"pruning in the {order} channel order", before_each=in_time
            )
        except _OutOfTime:
            for chain, perm in undone:
                permute.redo(chain, perm)
            raise
        chosen = [r for r in candidates if r.name in results]
        error = guard.measure(output_comparisons(model, chosen, results, guard.feeds, reference, names))
        trials[order] = (error, results, notes)
        log.info("%s on the %s with the %s channel order: %.4g", guard.scored, guard.label, order, error)
    keep = trials["permuted"][0] < trials["original"][0]
    if keep:
        for chain, perm in undone:
            permute.redo(chain, perm)
    _, results, notes = trials["permuted" if keep else "original"]
    for record in candidates:
        if record.name in notes:
            record.calibration = notes[record.name]
        if record.permutation is not None:
            record.permutation["model_error"] = {"permuted": trials["permuted"][0], "original": trials["original"][0]}
            record.permutation["guard"] = guard.label
            record.permutation["guard_score"] = guard.scored
            if not keep and record.permutation.get("kept", True):
                record.permutation["kept"] = False
                record.permutation["note"] = "original order kept: the whole model moved less without permutations"
    return Precomputed(method, results, seconds=time.monotonic() - started)
