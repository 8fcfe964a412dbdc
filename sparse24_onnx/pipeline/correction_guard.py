"""``--sequential --correct``'s model-level check: keep the corrected model only where the whole model says so.

Each layer's corrected fit is chosen on held-out rows of that layer alone; measured on
trained models, that is what CNNs want (a document-orientation classifier back to its
dense accuracy) but not always what transformers want (a word segmenter and a sentence
embedder moved further from dense, although every layer's own held-out error fell).  So
the whole model is pruned both ways -- sequentially with the correction, and in one shot
(the calibrated method's default) -- and the one whose outputs move less on the guard's
feeds is written (the held-out calibration feeds, as ``--permute``'s check uses, by the worst
relative L2 error of the outputs; where the user gave gates, the validation feeds, by the
gates' violation: the task's own measure decides).  A run that keeps the one-shot model says
so in a warning and in the report.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from ..methods import CalibratedMethod, Precomputed, SequentialMethod
from ..passes.weights import Status, weight_records
from .guard import Guard
from .layer_budget import output_comparisons, prune_candidates

__all__ = ["CorrectionChoice", "choose_correction"]

log = logging.getLogger("sparse24_onnx")

#: What each trial is called in the log, the warning and the report.
CORRECTED, ONE_SHOT = "sequential, corrected", "one shot"


class CorrectionChoice(Precomputed):
    """The kept trial's results, with what the check measured (the report's ``calibration.correction``)."""

    def __init__(self, inner, results: dict[str, np.ndarray], seconds: float, entry: dict[str, object]) -> None:
        super().__init__(inner, results, seconds=seconds)
        self.entry = entry
        #: The one-shot trial's statistics when it was kept (the calibration summary reads them).
        self.stats = getattr(inner, "stats", None)


def choose_correction(
    model: ir.Model,
    sequential: SequentialMethod,
    one_shot: Callable[[], CalibratedMethod],
    guard: Guard,
    warnings: list[str],
    flag: str = "--correct",
) -> CorrectionChoice:
    """Prune ``model``'s candidates sequentially with the correction and in one shot; keep the better.

    Args:
        model: The model, unpruned (left as it was: the trials' weights are swapped in and back).
        sequential: The corrected sequential method.
        one_shot: Builds the one-shot calibrated method (its statistics captured on ``model``).
        guard: The feeds the two are compared on, the dense model's outputs there, and the measure.
        warnings: Where the run's warning goes when the one-shot model is kept.
        flag: How the option is spelled to this caller.

    Returns:
        The kept trial's results, to be written by the pruning pass.
    """
    started = time.monotonic()
    reference, names = guard.outputs(model)
    candidates = [r for r in weight_records(model) if r.status == Status.CANDIDATE]
    trials: dict[str, tuple[float, dict[str, np.ndarray], dict[str, object], object]] = {}
    for label in (CORRECTED, ONE_SHOT):
        method = sequential if label == CORRECTED else one_shot()
        results, notes = prune_candidates(model, candidates, method, f"pruning ({label})")
        chosen = [r for r in candidates if r.name in results]
        comparisons = output_comparisons(model, chosen, results, guard.feeds, reference, names)
        error = guard.measure(comparisons)
        trials[label] = (error, results, notes, method)
        log.info("%s on the %s, %s: %.4g", guard.scored, guard.label, label, error)
    corrected, plain = trials[CORRECTED][0], trials[ONE_SHOT][0]
    kept = CORRECTED if corrected < plain else ONE_SHOT
    _, results, notes, method = trials[kept]
    for record in candidates:
        record.calibration = notes.get(record.name)
    if kept == ONE_SHOT:
        warnings.append(
            f"{flag}: the model pruned in one shot did better on the {guard.label} ({guard.scored} {plain:.4g}) than "
            f"the sequential corrected one ({corrected:.4g}), so the one-shot model was written"
        )
    # Layers the corrected trial could not pair (fitted uncorrected there), whichever trial was kept.
    unpaired = Counter(str(n["uncorrected"]) for n in trials[CORRECTED][2].values() if n and n.get("uncorrected"))
    entry = {
        "feeds": guard.label,
        "score": guard.scored,
        "scores": {CORRECTED: corrected, ONE_SHOT: plain},
        "kept": kept,
        "uncorrected": [{"why": why, "count": count} for why, count in unpaired.most_common()],
    }
    return CorrectionChoice(method, results, time.monotonic() - started, entry)
