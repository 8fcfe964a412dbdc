"""``prune_model``: load, calibrate, prune, store, validate and report, as named steps.

The library entry point behind ``sparse24 optimize``::

    result = prune_model("model.onnx", "model.sparse.onnx", method="sparsegpt",
                         calibration="calib/", max_rel_error=0.05)
    result.report["summary"]["pruned"]

Nothing here prints: progress goes to the ``sparse24_onnx`` logger (INFO), the
outcome is the returned :class:`PruneResult`, and every failure is an exception
from :mod:`sparse24_onnx.errors` (:class:`~sparse24_onnx.errors.ValidationFailed`
for a failed ``max_rel_error`` gate, carrying the result and its report).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from .._version import __version__
from ..calibration.capture import collect_stats
from ..calibration.summary import summarize
from ..errors import BadInput, ExitCode, ValidationFailed
from ..methods import (
    CalibratedMethod,
    GradientMethod,
    MagnitudeMethod,
    Precomputed,
    SequentialMethod,
    load_gradients,
)
from ..modelio.load import external_files, needs_external_data
from ..modelio.staging import StagedOutput, check_output_path
from ..passes import CompressWeights, FindWeights, Pipeline, PruneWeights, RecordProvenance
from ..passes.prune_weights import PruneMethod
from ..passes.weights import Declined, Status, WeightRecord, weight_records
from ..report import StagedReport, check_report_path, format_table, tensor_entry
from ..runtime.feeds import FeedSet, InputSpec, generate_feeds, infer_int_ranges, load_feeds
from ..runtime.sessions import open_session, run_feeds, session_provider
from ..validation.compare import OutputComparison, compare_runs, empty_outputs, worst_error
from .channel_order import Guard, choose_channel_order
from .layer_budget import Budget, fit_budget
from .loading import input_path, load_input, refuse_unmatched
from .options import PruneOptions
from .progress import LayerProgress

__all__ = ["PruneResult", "prune_model"]

log = logging.getLogger("sparse24_onnx")


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
        return _verdict(self.records, self.report.get("validation"), self.output, self.report.get("summary"))


def prune_model(
    model: str | os.PathLike | object,
    output: str | os.PathLike,
    options: PruneOptions | None = None,
    **keywords: object,
) -> PruneResult:
    """Prune a model's MatMul/Gemm/Conv weights to 2:4 and write it to ``output``.

    Args:
        model: Path of the ONNX model (never modified), or an ``onnx.ModelProto``.
        output: Where to write the pruned model (atomically; not at all on failure).
        options: A :class:`~sparse24_onnx.pipeline.options.PruneOptions` (keywords override its fields).
        **keywords: As the command line's options, by their Python names (see
            :class:`~sparse24_onnx.pipeline.options.PruneOptions`): ``method``,
            ``calibration`` (a path or a list of ``{input: array}`` dicts), ``damp``,
            ``sequential``, ``refit``, ``gradients``, ``exclude``, ``tc_shapes``,
            ``format``, ``permute``, ``permute_seconds``, ``external_data``,
            ``validate``, ``inputs``, ``shapes``, ``int_ranges``, ``seed``,
            ``num_feeds``, ``max_rel_error``, ``auto_exclude``.

    Returns:
        A :class:`PruneResult`.

    Raises:
        BadInput: The model, an option or the output location cannot be used.
        ValidationFailed: An output moved more than ``max_rel_error`` allows, or
            the validation witnessed nothing; ``error.result`` holds the report.
    """
    settings = PruneOptions.from_keywords(keywords, base=options)
    settings.check()
    with input_path(model) as (path, label):
        return _PruneRun(path, label, Path(output), settings).run()


@dataclass
class _Validation:
    """The validation feeds and the original model's outputs on them."""

    feeds: FeedSet
    output_names: list[str]
    reference: list[list[np.ndarray]]
    provider: str


@dataclass
class _PruneRun:
    """One run of :func:`prune_model`; each method is one step."""

    input: Path
    label: str
    output: Path
    options: PruneOptions
    warnings: list[str] = field(default_factory=list)

    def run(self) -> PruneResult:
        started = time.monotonic()
        out = check_output_path(self.output, self.input)
        report_path = self.options.report
        check_report_path(report_path, [self.input, out, out.with_name(out.name + ".data")])
        model = load_input(self.input, self.warnings)
        input_files = external_files(model)
        check_report_path(report_path, input_files)
        external = self.options.external_data or needs_external_data(model)
        with (
            StagedOutput(out, external_data=external, input_files=input_files) as staged,
            ExitStack() as stack,
        ):
            # Pre-flight, silent: every check that can refuse the run comes before the first progress line.
            records = self.find(model)
            method = self.gradient_method(records)
            session, calibration, feeds = self.feeds(model)
            log.info("loaded %s (%s)", self.label, _size(model))
            for line in self.warnings:
                log.warning("%s", line)
            candidates = sum(r.status == Status.CANDIDATE for r in records)
            log.info("found %d weights: %d to prune, %d skipped", len(records), candidates, len(records) - candidates)
            if calibration is not None:
                if self.options.method_chosen:
                    log.info("calibration data without a method: using %s (the recommended one)", self.options.method)
                for line in calibration.summary():
                    log.info("calibration %s", line)
            validation = self.reference(session, feeds)
            del session  # free the input's session (its copy of the weights) before pruning
            method = self.calibrate(model, calibration, stack) or method
            method = self.permute(model, method, calibration, validation)
            budget = None
            if self.options.auto_exclude:
                budget, method = self.fit_budget(model, method, validation)
            self.prune(model, method, staged, stack, external)
            records = weight_records(model)
            self.summarize_calibration(records, method, calibration)
            log.info("saving %s%s", out, f" with external data {out.name}.data" if external else "")
            staged.save(model)
            comparisons, entry = self.validate(staged.path, records, validation)
            if entry is not None and budget is not None and budget.sensitivity and budget.all_dense:
                least = min(budget.sensitivity.values())
                entry["passed"] = False
                entry["failure"] = (
                    f"{self.options.spell('auto_exclude')}: no weight can be pruned within "
                    f"{self.options.given('max_rel_error', self.options.max_rel_error)}: the least sensitive of "
                    f"the {len(budget.sensitivity)} weights moves the output by {least:.3g} when pruned alone"
                )
            writes = entry is None or entry["passed"] is not False
            report = self.report(records, method, entry, budget, staged.planned() if writes else [], input_files)
            # The report is staged before OUT is committed: a report that cannot be written stops
            # the run while nothing is written, so OUT and its report land together or not at all.
            staged_report = StagedReport(report_path, report) if report_path is not None else None
            written = staged.commit() if writes else []
            if staged_report is not None:
                staged_report.commit()
        result = PruneResult(report, records, comparisons, out if written else None)
        log.info("done in %.1f s", time.monotonic() - started)
        if entry is not None and entry["passed"] is False:
            raise ValidationFailed(f"{entry['failure']}; {out} was not written", result=result)
        return result

    # ------------------------------------------------------------------ steps

    def summarize_calibration(self, records: list[WeightRecord], method: PruneMethod, calibration) -> None:
        """Say on stderr and in the report which layers got the requested method, and why the others did not."""
        if calibration is None:
            self.calibration_entry = None
            return
        stats = getattr(method, "stats", None) or getattr(getattr(method, "inner", None), "stats", None)
        summary = summarize(records, self.options.method, len(calibration), stats)
        head, *rest = summary.lines()
        if summary.got < summary.layers:
            self.warnings.append(head)
            log.warning("%s", head)
        else:
            log.info("%s", head)
        for line in rest:
            self.warnings.append(line)
            log.warning("%s", line)
        self.calibration_entry = {
            "source": calibration.source,
            "feeds": len(calibration),
            "inputs": calibration.inputs,
            "method": self.options.method,
            "method_chosen": self.options.method_chosen,
            "summary": summary.as_dict(),
        }

    def find(self, model: ir.Model) -> list[WeightRecord]:
        """Record every weight and whether it will be pruned (FindWeights)."""
        finder = FindWeights(self.options.exclude, self.options.tc_shapes)
        records = finder(model).weights
        refuse_unmatched(finder, records, self.options.spell("exclude"))
        asymmetric = [
            r.name
            for r in records
            if r.status == Status.CANDIDATE and r.quantization is not None and not r.quantization.symmetric
        ]
        if asymmetric:
            self.warnings.append(
                f"{len(asymmetric)} quantized weight(s) have non-zero zero points ({', '.join(asymmetric[:3])}"
                f"{' ...' if len(asymmetric) > 3 else ''}): pruned correctly for onnxruntime, but TensorRT's "
                "explicit quantization needs zero points of 0 and will refuse them"
            )
        return records

    def gradient_method(self, records: list[WeightRecord]) -> PruneMethod:
        """The uncalibrated method (magnitude or gradient); warns about gradients that match no weight."""
        if self.options.method != "gradient":
            return MagnitudeMethod()
        gradients = self.options.gradients
        if isinstance(gradients, (str, os.PathLike)):
            gradients = load_gradients(gradients)
        names = {r.name for r in records}
        unknown = sorted(set(gradients) - names) if hasattr(gradients, "keys") else []
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            self.warnings.append(f"--gradients: {len(unknown)} key(s) match no weight of the model ({shown})")
        return GradientMethod(gradients)

    def feeds(self, model: ir.Model) -> tuple[object, FeedSet | None, FeedSet | None]:
        """An onnxruntime session on the input, the calibration feeds and the validation feeds (pre-flight).

        One session serves both the feeds' input specs and the reference run.
        """
        options = self.options
        if options.calibration is None and not options.validate:
            return None, None, None
        if not any(r.status == Status.CANDIDATE for r in weight_records(model)):
            # Nothing will change, so there is nothing to validate (and inputs onnxruntime would refuse
            # must not turn "nothing to prune" into an error).
            if options.validate:
                self.warnings.append("nothing to prune, so nothing to validate: the model is written unchanged")
            return None, None, None
        session = open_session(self.input, role="input")
        specs = InputSpec.from_session(session)
        calibration = None
        if options.calibration is not None:
            calibration = load_feeds(options.calibration, specs, option=options.spell("calibration"))
        feeds = None
        if options.validate:
            if options.inputs is not None:
                feeds = load_feeds(options.inputs, specs, option=options.spell("inputs"))
            else:
                default_range, int_ranges = options.integer_ranges
                feeds = generate_feeds(
                    specs,
                    shapes=options.shape_sizes,
                    int_ranges={**infer_int_ranges(model), **int_ranges},
                    default_int_range=default_range,
                    seed=options.seed or 0,
                    count=options.num_feeds or 1,
                )
        return session, calibration, feeds

    def reference(self, session, feeds: FeedSet | None) -> _Validation | None:
        """Run the original model on the validation feeds (said first, input by input)."""
        if feeds is None:
            return None
        for line in feeds.summary():
            log.info("%s", line)
        for line in feeds.warnings:  # before the run: what was assumed is known now
            log.warning("%s", line)
        log.info("running the original model in onnxruntime on %d feed(s)", len(feeds))
        reference = run_feeds(session, feeds.feeds, hint=feeds.hint)
        names = [o.name for o in session.get_outputs()]
        _refuse_non_finite(names, reference, feeds)
        return _Validation(feeds, names, reference, session_provider(session))

    def calibrate(self, model: ir.Model, calibration: FeedSet | None, stack: ExitStack) -> PruneMethod | None:
        """The calibrated method, with its statistics captured from the calibration feeds (unpermuted model)."""
        options = self.options
        if calibration is None:
            return None
        if options.sequential:
            return SequentialMethod(
                options.method,
                model,
                calibration.feeds,
                damp=options.damp,
                refit=options.refit,
                tune=options.tune,
            )
        candidates = [r for r in weight_records(model) if r.status == Status.CANDIDATE]
        log.info("capturing the inputs of %d layers on %d calibration feeds", len(candidates), len(calibration))
        started = time.monotonic()
        spill = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sparse24-stats-")))
        stats = collect_stats(
            model,
            candidates,
            calibration.feeds,
            hold_out=options.tune,
            memory_bytes=_calibration_budget(options.calibration_memory),
            spill=spill,
            hint=calibration.hint,
        )
        log.info("captured in %.1f s", time.monotonic() - started)
        return CalibratedMethod(options.method, stats, damp=options.damp, refit=options.refit, tune=options.tune)

    def permute(
        self, model: ir.Model, method: PruneMethod, calibration: FeedSet | None, validation: _Validation | None
    ) -> PruneMethod:
        """Reorder channels (``--permute``), kept only where the data says it helps: :mod:`.channel_order`."""
        if not self.options.permute:
            return method
        guard = None
        if calibration is not None:
            guard = Guard.held_out(calibration)
        elif validation is not None:
            guard = Guard(validation.feeds.feeds, validation.reference, validation.output_names, "validation feeds")
        return choose_channel_order(model, method, self.options.cap_seconds, guard, self.warnings)

    def fit_budget(self, model: ir.Model, method: PruneMethod, validation: _Validation) -> tuple[Budget, PruneMethod]:
        """Measure each candidate's sensitivity and leave the fewest most sensitive ones dense."""
        candidates = [r for r in weight_records(model) if r.status == Status.CANDIDATE]
        results = {}
        started = time.monotonic()
        progress = LayerProgress("pruning for the sensitivity search")
        try:
            for done, record in enumerate(candidates):
                progress(done, len(candidates), record)
                try:
                    results[record.name] = method.prune(record, record.real(record.source.tensor.numpy()))
                except Declined:
                    continue
        finally:
            progress.finish()
        candidates = [r for r in candidates if r.name in results]
        log.info("measuring the sensitivity of %d layers", len(candidates))
        budget = fit_budget(
            model,
            candidates,
            results,
            validation.feeds.feeds,
            validation.reference,
            validation.output_names,
            self.options.max_rel_error,
            progress=log.info,
        )
        rank = {name: i + 1 for i, name in enumerate(budget.dense)}
        for record in candidates:
            if record.name in rank:
                alone = budget.sensitivity[record.name]
                record.skip(
                    f"left dense by --auto-exclude: pruned alone it moves the output by {alone:.3g} "
                    f"(most sensitive {rank[record.name]} of {len(candidates)})",
                    deliberate=True,
                )
        return budget, Precomputed(method, results, seconds=time.monotonic() - started)

    def prune(self, model: ir.Model, method: PruneMethod, staged: StagedOutput, stack: ExitStack, external: bool):
        """Prune, store (compressed if asked) and record provenance: the rewriting passes."""
        options = self.options
        compressed = options.format == "compressed"
        prune_sink = staged
        if compressed:
            # Pruned weights wait for CompressWeights in memory or, when the model is
            # large enough for external data, in a scratch side file (never committed):
            # memory then stays bounded by one weight, as on the dense route.
            prune_sink = stack.enter_context(_scratch(staged.destination)) if external else None
        todo = sum(r.status == Status.CANDIDATE for r in weight_records(model))
        log.info("pruning %d weights (%s)", todo, method.name)
        started = time.monotonic()
        progress = LayerProgress()
        rewrite = [PruneWeights(method, progress=progress, sink=prune_sink)]
        if compressed:
            rewrite.append(CompressWeights(sink=staged))
        try:
            Pipeline(*rewrite, RecordProvenance(method.name, options.format, options.tc_shapes))(model)
        finally:
            progress.finish()
        pruned = sum(r.status == Status.PRUNED for r in weight_records(model))
        earlier = getattr(method, "seconds", 0.0)
        log.info(
            "pruned %d weights in %.1f s%s",
            pruned,
            time.monotonic() - started + earlier,
            f" ({earlier:.1f} s of it earlier, for the checks that reuse the results)" if earlier >= 0.1 else "",
        )

    def validate(
        self, path: Path, records: list[WeightRecord], validation: _Validation | None
    ) -> tuple[list[OutputComparison] | None, dict[str, object] | None]:
        """Run the staged OUT on the validation feeds and compare; the report's ``validation`` entry.

        The entry's ``failure`` says, in one line, why the gate failed (None when it did not).
        """
        if validation is None:
            return None, None
        log.info("running the pruned model in onnxruntime")
        session = open_session(path, role="output")
        candidate = run_feeds(session, validation.feeds.feeds, hint=validation.feeds.hint)
        del session
        comparisons = compare_runs(validation.output_names, validation.reference, candidate)
        warnings = [*validation.feeds.warnings]
        empty = empty_outputs(validation.output_names, validation.reference)
        if empty and comparisons:
            shown = ", ".join(repr(name) for name in empty[:5]) + (" ..." if len(empty) > 5 else "")
            warnings.append(f"{len(empty)} output(s) empty for every feed were not compared ({shown})")
        blind = _witnessed_nothing(validation, candidate, records, comparisons)
        warnings += blind
        bound = self.options.max_rel_error
        worst = worst_error(comparisons)
        if worst > 1 or np.isnan(worst):
            warnings.append(
                f"the worst output error is {worst:.3g}: the pruned model's output no longer resembles the original's; "
                + _remedy(self.options)
            )
        failure = None
        if bound is not None:
            if blind:
                failure = f"validation witnessed nothing ({blind[0]}); " + _witness_hint(validation.feeds)
            elif not worst <= bound:
                failure = (
                    f"validation failed: relative L2 error {worst:.4g} exceeds "
                    f"{self.options.given('max_rel_error', float(f'{bound:g}'))}"
                )
        entry = {
            "feeds": len(validation.feeds),
            "source": validation.feeds.source,
            "inputs": validation.feeds.inputs,
            "provider": validation.provider,
            "max_rel_error": bound,
            "worst_rel_l2_error": worst,
            "witnessed": not blind,
            "passed": None if bound is None else failure is None,
            "failure": failure,
            "warnings": warnings,
            "outputs": [c.as_dict() for c in comparisons],
            "not_compared": empty,
        }
        for line in warnings[len(validation.feeds.warnings) :]:  # the feeds' own were said before the run
            log.warning("%s", line)
        return comparisons, entry

    def report(
        self,
        records: list[WeightRecord],
        method: PruneMethod,
        validation: dict[str, object] | None,
        budget: Budget | None,
        written: list[tuple[Path, Path]],
        input_files: set[Path],
    ) -> dict[str, object]:
        """The report document (the ``--report`` JSON); ``written``: (final, staged) path of each file OUT takes."""
        inputs = [self.input, *sorted(input_files)]
        return {
            "tool": "sparse24-onnx",
            "version": __version__,
            "command": "optimize",
            "input": self.label,
            "output": str(self.output) if written else None,
            "files": [str(final) for final, _ in written],
            "method": method.name,
            "format": self.options.format,
            "summary": _summary(records, inputs, written),
            "warnings": self.warnings,
            "tensors": [tensor_entry(r) for r in records],
            "validation": validation,
            "calibration": getattr(self, "calibration_entry", None),
            "auto_exclude": None
            if budget is None
            else {
                "max_rel_error": self.options.max_rel_error,
                "dense": budget.dense,
                "error": budget.error,
                "sensitivity": budget.sensitivity,
                "evaluations": budget.evaluations,
            },
            "exit_code": int(ExitCode.FAILED_CHECK if validation and validation["passed"] is False else ExitCode.OK),
        }


def _witnessed_nothing(
    validation: _Validation,
    candidate: list[list[np.ndarray]],
    records: list[WeightRecord],
    comparisons: list[OutputComparison],
) -> list[str]:
    """Why the comparison cannot have seen the pruning, one line each (empty when it could)."""
    problems = []
    names = validation.output_names
    if not comparisons:
        problems.append("the model has no non-empty numeric output to compare")
    changed = any(r.status == Status.PRUNED and r.metrics is not None and r.metrics.pruned_count for r in records)
    float_outputs = [
        i for i, _ in enumerate(names) if all(np.asarray(run[i]).dtype.kind == "f" for run in validation.reference)
    ]
    if changed and float_outputs and not problems:
        identical = all(
            _same_bits(np.asarray(ref[i]), np.asarray(cand[i]))
            for ref, cand in zip(validation.reference, candidate, strict=True)
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


def _refuse_non_finite(names: list[str], reference: list[list[np.ndarray]], feeds: FeedSet) -> None:
    """Refuse feeds with NaN or Inf inputs on which the original model's outputs are not finite either.

    Non-finite *inputs* are fine when the outputs are finite (a ``-inf`` additive attention mask, say);
    a model whose own weights make an output non-finite is compared as it is (equal values count as equal).
    """
    for index, (feed, outputs) in enumerate(zip(feeds.feeds, reference, strict=True)):
        if all(np.isfinite(a).all() for a in feed.values() if isinstance(a, np.ndarray) and a.dtype.kind == "f"):
            continue
        for name, array in zip(names, outputs, strict=False):
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


def _verdict(
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
        if not validation["witnessed"]:
            verdict = "WITNESSED NOTHING"
        elif bound is None:
            verdict = "no bound set"
        elif validation["passed"]:
            verdict = f"within {bound:g}"
        elif worst <= bound:
            verdict = f"FAILED: {validation.get('failure')}"
        else:
            verdict = f"ABOVE the bound {bound:g}"
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


def _size(model: ir.Model) -> str:
    """``N nodes, X MiB of weights`` (main graph nodes, all initializers)."""
    nbytes = sum(v.const_value.nbytes for g in model.graphs() for v in g.initializers.values() if v.const_value)
    return f"{len(model.graph)} nodes, {nbytes / 2**20:.1f} MiB in initializers"


def _calibration_budget(gib: float | None) -> int:
    """Bytes of layer statistics held in memory at once: ``gib``, or a quarter of the machine's memory."""
    if gib is not None:
        return int(gib * 2**30)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return max(256 << 20, total // 4)


def _scratch(out: Path) -> StagedOutput:
    """A staged side file beside OUT for pruned weights on their way to compression; deleted on exit."""
    return StagedOutput(out.with_name(out.name + ".pruned"), external_data=True)
