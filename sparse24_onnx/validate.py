"""Validation: run the original and the pruned model in onnxruntime and compare outputs.

Each model is loaded into onnxruntime once, by path (so external data works),
and run on the same feeds.  Per output, over all feeds together:

* ``max_abs_error``: ``max |y' - y|``
* ``rel_l2_error``: ``||y' - y|| / ||y||`` (0 when both are zero, inf when only ``y`` is)
* ``cosine_similarity``: ``<y, y'> / (||y|| ||y'||)`` (1 when both are zero)

computed in float64 from running sums, so feeds are never concatenated.  An
element equal in both (the same inf, or NaN in both) counts as unchanged and
non-finite reference values stay out of the norms; any non-finite value that
changed makes the error non-finite, which fails a bound.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from .errors import BadInput

__all__ = ["OutputComparison", "compare_runs", "open_session", "run_feeds"]


def open_session(path: str | os.PathLike, *, role: str):
    """An onnxruntime CPU session for the model at ``path``.

    Args:
        role: ``"input"`` or ``"output"``: a model the user gave that onnxruntime
            cannot load is bad input (exit 2); a pruned model that it cannot load
            is a bug and raised as ``RuntimeError``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: keep the tool's output readable
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        reason = " ".join(str(error).split())
        if len(reason) > 300:
            reason = reason[:300] + "..."
        if role == "input":
            raise BadInput(
                f"{path}: onnxruntime cannot load the model ({reason}); "
                "pass --no-validate to prune it without validation"
            ) from None
        raise RuntimeError(f"onnxruntime cannot load the pruned model: {reason}") from None


def run_feeds(session, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Outputs of ``session`` for every feed, in ``session.get_outputs()`` order."""
    try:
        return [session.run(None, feed) for feed in feeds]
    except Exception as error:
        reason = " ".join(str(error).split())[:300]
        raise BadInput(
            f"onnxruntime cannot run the model on the given inputs ({reason}); check --inputs/--shape"
        ) from None


@dataclass(frozen=True)
class OutputComparison:
    """How far one output moved; see the module docstring for the definitions."""

    name: str
    max_abs_error: float
    rel_l2_error: float
    cosine_similarity: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def compare_runs(
    names: list[str], reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]
) -> list[OutputComparison]:
    """Compare the outputs of two models run on the same feeds.

    Outputs that are not numeric (strings, sequences) are left out.
    """
    comparisons = []
    for index, name in enumerate(names):
        maxima = [0.0]
        diff_sq = ref_sq = cand_sq = dot = 0.0
        numeric = True
        for ref_run, cand_run in zip(reference, candidate, strict=False):
            y = np.asarray(ref_run[index])
            z = np.asarray(cand_run[index])
            if y.dtype.kind not in "fiub" or z.dtype.kind not in "fiub":
                numeric = False
                break
            if y.shape != z.shape:
                raise RuntimeError(f"output {name!r} changed shape from {y.shape} to {z.shape}")
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
        comparisons.append(OutputComparison(name, max_abs, rel, cosine))
    return comparisons
