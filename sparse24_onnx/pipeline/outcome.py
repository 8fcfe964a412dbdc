"""What a pruning run hands back: the :class:`PruneResult`, the report document and the one-line verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir

from ..errors import ExitCode
from ..passes.weights import Status, WeightRecord
from ..report import format_table, report_header, tensor_entry
from ..validation.compare import OutputComparison
from .layer_budget import Budget
from .options import PruneOptions

__all__ = ["PruneResult", "RunFacts", "build_report", "model_size", "verdict"]


@dataclass
class PruneResult:
    """What one pruning run did.

    Attributes:
        report: The report, exactly the document ``--report`` writes (JSON-ready
            but for non-finite floats, which the writer turns into strings).
        records: Per weight found, what was decided (see :class:`WeightRecord`).
        comparisons: Per output, how far it moved (None without validation).
        output: Where OUT was written (None when it was not).
        exit_code: 0; a failed gate raises :class:`ValidationFailed` instead.
    """

    report: dict[str, object]
    records: list[WeightRecord]
    comparisons: list[OutputComparison] | None
    output: Path | None
    exit_code: int = int(ExitCode.OK)

    @property
    def warnings(self) -> list[str]:
        """Every warning of the run: loading, options, validation."""
        validation = self.report.get("validation") or {}
        return [*self.report.get("warnings", []), *validation.get("warnings", [])]

    def table(self) -> str:
        """The weights, and the outputs when validated, as an aligned text table."""
        return format_table(self.records, self.comparisons)

    @property
    def verdict(self) -> str:
        """One line: what was pruned, the validation's outcome, what was written."""
        return verdict(self.records, self.report.get("validation"), self.output, self.report.get("summary"))


@dataclass
class RunFacts:
    """What the report says about the run itself: where from, where to, how, and what it warned of."""

    input: Path
    label: str
    output: Path
    options: PruneOptions
    method: str = ""
    input_files: set[Path] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    calibration: dict[str, object] | None = None
    #: ``--correct``'s model-level check: each trial's output error on the guard's feeds and which was kept.
    correction: dict[str, object] | None = None
    #: Wall seconds per phase (load, reference run, capture, permutation, sensitivity search, pruning ...).
    timings: dict[str, float] = field(default_factory=dict)
    #: Threads onnxruntime and NumPy ran with (:func:`~sparse24_onnx.runtime.threads.thread_counts`).
    threads: dict[str, object] = field(default_factory=dict)
    #: ``--quantize``: what was quantized, the activations' scales, TensorRT's rules (None without it).
    quantize: dict[str, object] | None = None


def build_report(
    run: RunFacts,
    records: list[WeightRecord],
    validation: dict[str, object] | None,
    budget: Budget | None,
    written: list[tuple[Path, Path]],
) -> dict[str, object]:
    """The report document (the ``--report`` JSON); ``written``: (final, staged) path of each file OUT takes."""
    inputs = [run.input, *sorted(run.input_files)]
    return {
        **report_header("optimize"),
        "input": run.label,
        "output": str(run.output) if written else None,
        "files": [str(final) for final, _ in written],
        "method": run.method,
        "format": run.options.format,
        "summary": _summary(records, inputs, written),
        "warnings": run.warnings,
        "tensors": [tensor_entry(r) for r in records],
        "validation": validation,
        "calibration": run.calibration,
        "timings": run.timings,
        "threads": run.threads,
        "quantize": run.quantize,
        "auto_exclude": None
        if budget is None
        else {
            "max_rel_error": run.options.bound,
            "gates": [{"option": g.option, "output": g.output, "bound": g.bound} for g in run.options.gates],
            "dense": budget.dense,
            "error": budget.error,
            "sensitivity": budget.sensitivity,
            "evaluations": budget.evaluations,
        },
        "exit_code": int(ExitCode.FAILED_CHECK if validation and validation["passed"] is False else ExitCode.OK),
    }


def _summary(
    records: list[WeightRecord], inputs: list[Path], written: list[tuple[Path, Path]]
) -> dict[str, int | None]:
    pruned = [r for r in records if r.status == Status.PRUNED]
    return {
        "weights_found": len(records),
        "pruned": len(pruned),
        "skipped": len(records) - len(pruned),
        "stored_compressed": sum(r.storage == "compressed" for r in pruned),
        "pruned_elements": sum(r.metrics.pruned_count for r in pruned if r.metrics),
        "total_elements": sum(r.metrics.total_count for r in pruned if r.metrics),
        "input_bytes": sum(p.stat().st_size for p in inputs),
        "output_bytes": sum(staged.stat().st_size for _, staged in written) if written else None,
    }


def verdict(
    records: list[WeightRecord], validation: dict | None, written: Path | None, summary: dict | None = None
) -> str:
    pruned = [r for r in records if r.status == Status.PRUNED]
    if not records:
        head = "nothing to prune: no MatMul/Gemm/Conv weight held as a constant"
    elif not pruned:
        head = f"nothing to prune: all {len(records)} weights were skipped (reasons above)"
    else:
        head = f"pruned {len(pruned)} of {len(records)} weights to 2:4"
        stored = sum(r.storage == "compressed" for r in pruned)
        if stored:
            head += f" ({stored} stored compressed)"
    if validation is not None:
        worst = validation["worst_rel_l2_error"]
        bound = validation["max_rel_error"]
        gates = validation.get("gates") or []
        if not validation["witnessed"]:
            verdict = "WITNESSED NOTHING"
        elif not gates:
            verdict = "no bound set"
        elif validation["passed"]:
            if len(gates) == 1:
                verdict = f"within {bound:g}" if bound is not None else f"{gates[0]['option']} holds"
            else:
                verdict = f"all {len(gates)} gates hold"
        else:
            verdict = f"FAILED: {validation.get('failure')}"
        head += f"; worst output relative L2 error {worst:.4g} ({verdict})"
    else:
        head += "; not validated"
    if written:
        head += f"; wrote {written}"
        if summary and summary.get("output_bytes") is not None:
            size, before = summary["output_bytes"], summary.get("input_bytes") or 0
            head += f" ({_human(size)}" + (f", {size / before:.2f} of the input)" if before else ")")
    else:
        head += "; nothing written"
    return head


def _human(nbytes: int) -> str:
    """A size in the units ``ls -h`` users read: ``59.2 MB``."""
    for unit in ("B", "kB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1000
    return f"{nbytes:.1f} TB"


def model_size(model: ir.Model) -> str:
    """``N nodes, X MiB of weights`` (main graph nodes, all initializers)."""
    nbytes = sum(v.const_value.nbytes for g in model.graphs() for v in g.initializers.values() if v.const_value)
    return f"{len(model.graph)} nodes, {nbytes / 2**20:.1f} MiB in initializers"
