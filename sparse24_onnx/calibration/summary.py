"""What a calibrated run did, layer by layer, said in a few lines: the method asked for, or why not.

A calibrated method can end up not running on some layers: no activations
reach them (weights inside functions, say), no Hessian could be built (grouped
convolutions, K above the capture limit), or the per-layer tuning chose a
simpler candidate on held-out rows.  Each of these is in the layer's report
entry; :func:`summarize` counts them per outcome and reason so that stderr and
the report's top level say it too, and aggregates the calibration-size
warnings ("fewer rows than K").
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from ..passes.weights import Status, WeightRecord

__all__ = ["CalibrationSummary", "calibration_entry", "summarize"]


@dataclass
class CalibrationSummary:
    """Per requested method: how many layers got it, and what the others got, grouped by reason.

    Attributes:
        requested: The calibrated method asked for (``sparsegpt`` ...).
        layers: Pruned weights the method was applied to.
        got: How many of them ran the requested method.
        others: ``(method used, why, count)`` for the rest, largest group first.
        scarce: Layers with fewer calibration rows than their K, the largest such K, and
            about how many feeds would give K rows (None when none were short).
        non_finite: ``(weight, rows left out, feeds)`` for layers whose input held NaN or Inf.
        sampled: Layers whose ``X^T X`` came from a sample of their rows, and the rows used and available
            over them (None when every layer used every row).
    """

    requested: str
    layers: int = 0
    got: int = 0
    others: list[tuple[str, str, int]] = field(default_factory=list)
    scarce: dict[str, int] | None = None
    non_finite: list[tuple[str, int, list[int]]] = field(default_factory=list)
    sampled: dict[str, int] | None = None
    #: ``--correct``: layers fitted uncorrected because their input could not be paired, by reason.
    uncorrected: list[tuple[str, int]] = field(default_factory=list)

    def lines(self) -> list[str]:
        """One line of outcome, then one per warning (for stderr and the report's warnings)."""
        head = f"{self.requested} ran on {self.got} of {self.layers} calibrated layers"
        if self.others:
            head += "; " + "; ".join(f"{count} got {method}: {why}" for method, why, count in self.others)
        lines = [head]
        if self.sampled:
            lines.append(
                f"X^T X of {self.sampled['layers']} layer(s) from a sample of their rows ({self.sampled['rows']} of "
                f"{self.sampled['available']}; --rows-per-feature 0 takes every row)"
            )
        for why, count in self.uncorrected:
            lines.append(f"--correct was not offered on {count} layer(s): {why}")
        if self.scarce:
            lines.append(
                f"{self.scarce['layers']} layer(s) had fewer calibration rows than their K (up to "
                f"{self.scarce['max_k']}): their X^T X is rank-deficient and the fit can overfit; bring at least "
                f"~{self.scarce['feeds_needed']} feeds like these"
            )
        for name, rows, feeds in self.non_finite[:5]:
            shown = ", ".join(map(str, feeds[:5])) + (" ..." if len(feeds) > 5 else "")
            lines.append(
                f"the input of layer {name!r} held NaN or Inf in {rows} row(s) of calibration feed(s) {shown} (the "
                "model's own activations overflow there): those rows were left out of its statistics"
            )
        if len(self.non_finite) > 5:
            lines.append(f"... and {len(self.non_finite) - 5} more layers with NaN or Inf inputs")
        return lines

    def as_dict(self) -> dict[str, object]:
        return {
            "requested": self.requested,
            "layers": self.layers,
            "got": self.got,
            "others": [{"method": m, "why": w, "count": c} for m, w, c in self.others],
            "scarce": self.scarce,
            "non_finite": [{"weight": n, "rows": r, "feeds": f} for n, r, f in self.non_finite],
            "sampled": self.sampled,
            "uncorrected": [{"why": w, "count": c} for w, c in self.uncorrected],
        }


def summarize(records: list[WeightRecord], requested: str, feeds: int, stats: dict | None = None) -> CalibrationSummary:
    """Count, over the pruned weights, which method each one got and why (see the module docstring).

    Args:
        records: The run's weight records (their ``calibration`` notes).
        requested: The method family asked for.
        feeds: How many calibration feeds there were (for the "bring more feeds" estimate).
        stats: Per weight, its layer input's statistics (for the NaN/Inf rows), if known.
    """
    summary = CalibrationSummary(requested)
    others: Counter[tuple[str, str]] = Counter()
    scarce_k: list[tuple[int, int]] = []
    sampled = Counter()
    uncorrected: Counter[str] = Counter()
    for record in records:
        note = record.calibration
        if record.status != Status.PRUNED or note is None:
            continue
        summary.layers += 1
        solver = str(note.get("solver", ""))
        if solver == requested and not note.get("fallback"):
            summary.got += 1
        else:
            why = note.get("fallback") or f"chosen on held-out calibration rows (lower error than {requested})"
            others[(solver or str(note.get("method")), str(why))] += 1
        k, samples = note.get("k"), note.get("hessian_rows", note.get("samples"))
        if isinstance(k, int) and isinstance(samples, int) and 0 < samples < k:
            scarce_k.append((k, samples))
        if note.get("uncorrected"):
            uncorrected[str(note["uncorrected"])] += 1
        used, available = note.get("hessian_rows"), note.get("hessian_rows_available")
        if isinstance(used, int) and isinstance(available, int) and used < available:
            sampled.update(layers=1, rows=used, available=available)
    summary.others = [(m, w, c) for (m, w), c in others.most_common()]
    summary.sampled = dict(sampled) or None
    summary.uncorrected = uncorrected.most_common()
    if scarce_k:
        per_feed = max(1.0, min(samples for _, samples in scarce_k) / max(feeds, 1))
        max_k = max(k for k, _ in scarce_k)
        summary.scarce = {"layers": len(scarce_k), "max_k": max_k, "feeds_needed": math.ceil(max_k / per_feed)}
    if stats:
        seen: set[int] = set()
        for name, found in stats.items():
            if found.non_finite_rows and id(found) not in seen:
                seen.add(id(found))
                summary.non_finite.append((name, found.non_finite_rows, list(found.non_finite_feeds)))
    return summary


def calibration_entry(
    records: list[WeightRecord], requested: str, chosen: bool, calibration, stats: dict | None, warnings: list[str]
) -> dict[str, object]:
    """The report's ``calibration`` entry; the summary's lines are logged and the warnings among them added
    to ``warnings`` (``calibration`` is the run's FeedSet, ``chosen``: the method was chosen for the user)."""
    import logging

    log = logging.getLogger("sparse24_onnx")
    summary = summarize(records, requested, len(calibration), stats)
    head, *rest = summary.lines()
    quiet = {summary.lines()[1]} if summary.sampled else set()
    for line, loud in ((head, summary.got < summary.layers), *((line, line not in quiet) for line in rest)):
        if loud:
            warnings.append(line)
            log.warning("%s", line)
        else:
            log.info("%s", line)
    return {
        "source": calibration.source,
        "feeds": len(calibration),
        "inputs": calibration.inputs,
        "method": requested,
        "method_chosen": chosen,
        "summary": summary.as_dict(),
    }
