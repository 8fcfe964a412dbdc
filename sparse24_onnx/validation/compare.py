"""How far the pruned model's outputs moved from the original's, on the same feeds.

Per output, over all feeds together:

* ``max_abs_error``: ``max |y' - y|``
* ``rel_l2_error``: ``||y' - y|| / ||y||`` (0 when both are zero, inf when only ``y`` is)
* ``cosine_similarity``: ``<y, y'> / (||y|| ||y'||)`` (1 when both are zero)
* ``top1_agreement``: the share of positions whose argmax along the last axis is the same (the
  last axis taken as a class axis: a classifier's logits, a tagger's per-token scores); None for
  outputs without one (integers, rank 0, a last axis of length 1), ``top1_note`` then says why

computed in float64 from running sums, so feeds are never concatenated.  An
element equal in both (the same inf, or NaN in both) counts as unchanged and
non-finite reference values stay out of the norms; any non-finite value that
changed makes the error non-finite, which fails a bound.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["OutputComparison", "compare_runs", "empty_outputs", "worst_error"]


@dataclass(frozen=True)
class OutputComparison:
    """How far one output moved; see the module docstring for the definitions."""

    name: str
    max_abs_error: float
    rel_l2_error: float
    cosine_similarity: float
    top1_agreement: float | None = None
    top1_note: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def compare_runs(
    names: list[str], reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]
) -> list[OutputComparison]:
    """Compare the outputs of two models run on the same feeds.

    Outputs that are not numeric (strings, sequences) are left out, and so are
    outputs empty in every feed (a zero-length state: nothing to compare; see
    :func:`empty_outputs`).
    """
    comparisons = []
    empty = set(empty_outputs(names, reference))
    for index, name in enumerate(names):
        if name in empty:
            continue
        maxima = [0.0]
        diff_sq = ref_sq = cand_sq = dot = 0.0
        agree = positions = 0
        no_classes = ""
        numeric = True
        for ref_run, cand_run in zip(reference, candidate, strict=False):
            y = np.asarray(ref_run[index])
            z = np.asarray(cand_run[index])
            if y.dtype.kind not in "fiub" or z.dtype.kind not in "fiub":
                numeric = False
                break
            if y.shape != z.shape:
                raise RuntimeError(f"output {name!r} changed shape from {y.shape} to {z.shape}")
            if y.dtype.kind != "f" or y.ndim == 0 or y.shape[-1] < 2:
                no_classes = no_classes or (
                    "not a float output" if y.dtype.kind != "f" else "no last axis of 2 or more to take as classes"
                )
            elif y.size:
                with np.errstate(invalid="ignore"):
                    agree += int((np.argmax(y, axis=-1) == np.argmax(z, axis=-1)).sum())
                positions += y.size // y.shape[-1]
            y = y.astype(np.float64).ravel()
            z = z.astype(np.float64).ravel()
            if y.size:
                # Equal values (the same inf, NaN where both are NaN) count as no change;
                # a non-finite value that differs makes the error non-finite.
                same = (y == z) | (np.isnan(y) & np.isnan(z))
                with np.errstate(invalid="ignore", over="ignore"):
                    diff = np.where(same, 0.0, z - y)
                finite = np.isfinite(y) & np.isfinite(z)
                yf, zf = y[finite], z[finite]
                maxima.append(float(np.max(np.abs(diff))))
                diff_sq += float(diff @ diff)
                ref_sq += float(yf @ yf)
                cand_sq += float(zf @ zf)
                dot += float(yf @ zf)
        if not numeric:
            continue
        max_abs = float(np.max(maxima))  # NaN if any output was NaN
        rel = math.sqrt(diff_sq / ref_sq) if ref_sq > 0 else 0.0 if diff_sq == 0 else math.inf
        if ref_sq > 0 and cand_sq > 0:
            cosine = dot / math.sqrt(ref_sq * cand_sq)
        else:
            cosine = 1.0 if ref_sq == cand_sq == 0 else 0.0
        top1 = agree / positions if positions and not no_classes else None
        comparisons.append(OutputComparison(name, max_abs, rel, cosine, top1, no_classes))
    return comparisons


def worst_error(comparisons: list[OutputComparison]) -> float:
    """The largest relative L2 error of any output (NaN if any is NaN; 0 when there is none)."""
    values = [c.rel_l2_error for c in comparisons]
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values, default=0.0)


def empty_outputs(names: list[str], reference: list[list[np.ndarray]]) -> list[str]:
    """Outputs that hold no element in any feed (zero-length by design, or for these inputs)."""
    return [
        name
        for index, name in enumerate(names)
        if reference and all(isinstance(run[index], np.ndarray) and run[index].size == 0 for run in reference)
    ]
