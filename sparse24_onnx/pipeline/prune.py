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
from pathlib import Path

import onnx_ir as ir

from ..calibration.capture import collect_stats, memory_budget
from ..calibration.summary import calibration_entry
from ..errors import BadInput, ValidationFailed
from ..methods import CalibratedMethod, SequentialMethod, uncalibrated_method
from ..modelio.load import external_files, load_model, needs_external_data
from ..modelio.staging import StagedOutput, check_output_path
from ..passes import CompressWeights, FindWeights, Pipeline, PruneWeights, RecordProvenance
from ..passes.prune_weights import PruneMethod
from ..passes.weights import Status, WeightRecord, weight_records
from ..report import StagedReport, check_report_path
from ..runtime.feeds import FeedSet, InputSpec, generate_feeds, infer_int_ranges, load_feeds
from ..runtime.loaders import image_feeds, text_feeds
from ..runtime.sessions import open_session
from ..runtime.threads import thread_counts
from .channel_order import choose_channel_order
from .correction_guard import choose_correction
from .guard import Guard
from .layer_budget import leave_sensitive_dense
from .loading import input_path, load_input, refuse_unmatched
from .options import PruneOptions
from .outcome import PruneResult, RunFacts, build_report, model_size
from .progress import LayerProgress, PhaseClock
from .quantize import QuantizeStep, check_quantizable
from .validate import Reference, run_reference, validate_output

__all__ = ["PruneResult", "prune_model"]

log = logging.getLogger("sparse24_onnx")


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


class _PruneRun:
    """One run of :func:`prune_model`: :meth:`run` sequences the steps, each a method or a module's function."""

    def __init__(self, path: Path, label: str, output: Path, options: PruneOptions) -> None:
        self.facts = RunFacts(path, label, output, options, method=options.method)
        self.options = options
        self.warnings = self.facts.warnings

    def run(self) -> PruneResult:
        clock = PhaseClock()
        facts, options = self.facts, self.options
        out = check_output_path(facts.output, facts.input)
        check_report_path(options.report, [facts.input, out, out.with_name(out.name + ".data")])
        model = load_input(facts.input, self.warnings)
        step = None
        if options.quantize is not None:
            model = check_quantizable(model, options.quantize, options.spell("quantize"), self.warnings)
            step = QuantizeStep(
                options.quantize, options.activation_calibration, options.spell("quantize"), options.method
            )
        facts.input_files = external_files(model)
        check_report_path(options.report, facts.input_files)
        external = options.external_data or needs_external_data(model)
        with (
            StagedOutput(out, external_data=external, input_files=facts.input_files) as staged,
            ExitStack() as stack,
        ):
            # Pre-flight, silent: every check that can refuse the run comes before the first progress line.
            records = self.find(model)
            if step is not None:  # the weights on the low type's grid: found again as quantized weights
                step.weights(model)
                records = self.find(model)
                step.mark(records)
                self.warnings += step.left_float_lines()
            method = uncalibrated_method(options.method, options.gradients, {r.name for r in records}, self.warnings)
            session, calibration, feeds = self.feeds(model)
            self.say_found(model, records, calibration)
            clock.lap("load")
            reference = run_reference(session, feeds)
            del session  # free the input's session (its copy of the weights) before pruning
            clock.lap("reference run")
            method = self.calibrate(model, calibration, stack, reference) or method
            clock.lap("capture" if facts.correction is None else "capture, both trials of --correct")
            method = self.permute(model, method, calibration, reference)
            clock.lap("permutation")
            budget = None
            if options.auto_exclude:
                budget, method = leave_sensitive_dense(
                    model, method, reference.feeds.feeds, reference.outputs, reference.output_names,
                    options.gates,
                )  # fmt: skip
                clock.lap("sensitivity search")
            self.prune(model, method, staged, stack, external)
            clock.lap("pruning")
            records = weight_records(model)
            if calibration is not None:
                stats = getattr(method, "stats", None) or getattr(getattr(method, "inner", None), "stats", None)
                facts.calibration = calibration_entry(
                    records, options.method, options.method_chosen, calibration, stats, self.warnings
                )
                if facts.correction is not None:
                    facts.calibration["correction"] = facts.correction
            if step is not None:
                step.activations(model, records, calibration.feeds, self.warnings)
                clock.lap("activation calibration")
            log.info("saving %s%s", out, f" with external data {out.name}.data" if external else "")
            staged.save(model)
            clock.lap("saving")
            if step is not None:
                step.check(model, self.warnings)
                facts.quantize = step.entry()
            outcome = None if reference is None else validate_output(staged.path, records, reference, options)
            clock.lap("validation")
            facts.timings = {phase: round(seconds, 3) for phase, seconds in clock.seconds.items()}
            facts.threads = thread_counts()
            if outcome is not None and budget is not None and budget.all_dense:
                held = ", ".join(options.given(g.option, g.spelled_bound) for g in options.gates)
                outcome.fail(budget.unmet(options.spell("auto_exclude"), held))
            writes = outcome is None or outcome.passed is not False
            entry = None if outcome is None else outcome.as_dict()
            report = build_report(facts, records, entry, budget, staged.planned() if writes else [])
            # The report is staged before OUT is committed: a report that cannot be written stops
            # the run while nothing is written, so OUT and its report land together or not at all.
            staged_report = StagedReport(options.report, report) if options.report is not None else None
            try:
                written = staged.commit() if writes else []
            except BaseException:
                if staged_report is not None:
                    staged_report.discard()
                raise
            if staged_report is not None:
                staged_report.commit()
        comparisons = None if outcome is None else outcome.comparisons
        result = PruneResult(report, records, comparisons, out if written else None)
        log.info("%s", clock.line())
        if outcome is not None and outcome.passed is False:
            raise ValidationFailed(f"{outcome.failure}; {out} was not written", result=result)
        return result

    # ------------------------------------------------------------------ steps

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

    def say_found(self, model: ir.Model, records: list[WeightRecord], calibration: FeedSet | None) -> None:
        """The first progress lines, once the pre-flight checks passed: the model, the weights, the data."""
        log.info("loaded %s (%s)", self.facts.label, model_size(model))
        for line in self.warnings:
            log.warning("%s", line)
        candidates = sum(r.status == Status.CANDIDATE for r in records)
        log.info("found %d weights: %d to prune, %d skipped", len(records), candidates, len(records) - candidates)
        if calibration is not None:
            if self.options.method_chosen:
                log.info("calibration data without a method: using %s (the recommended one)", self.options.method)
            for line in calibration.summary():
                log.info("calibration %s", line)

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
        session = open_session(self.facts.input, role="input")
        outputs = [o.name for o in session.get_outputs()]
        for gate in options.gates:
            if gate.output is not None and gate.output not in outputs:
                raise BadInput(
                    f"{options.given(gate.option, gate.spelled_bound)}: the model has no output {gate.output!r} "
                    f"(its outputs: {', '.join(outputs)})"
                )
        specs = InputSpec.from_session(session)
        calibration = None
        if options.calibration is not None:
            calibration = self.load("calibration", specs)
        feeds = None
        if options.validate:
            if options.inputs is not None:
                feeds = self.load("inputs", specs)
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

    def load(self, name: str, specs: list[InputSpec]) -> FeedSet:
        """The feeds of option ``name`` (``inputs`` or ``calibration``): through the built-in text or image
        loader when the option names a text file or an image folder, else as given."""
        options = self.options
        source, option = getattr(options, name), options.spell(name)
        described = None
        if isinstance(source, (str, os.PathLike)) and not str(source).endswith((".npz", ".py")):
            path = Path(source)
            if options.tokenizer is not None and path.is_file():
                feeds = text_feeds(path, options.tokenizer, specs, seq_len=options.seq_len, option=option)
                described = f"{path} (text through {options.tokenizer})"
            elif path.is_dir() and not any(path.glob("*.npz")):
                if options.image_recipe is None:
                    raise BadInput(
                        f"{option} {path}: a folder of images: give {options.spell('image_size')} HxW (and the "
                        f"model's {options.spell('mean')}, {options.spell('std')} ...) to read them"
                    )
                recipe = options.image_recipe
                feeds = lambda: image_feeds(path, recipe, specs, option=option)  # noqa: E731  (read per pass)
                described = f"{path} (images, {'x'.join(map(str, options.image_recipe.size))})"
        if described is None:
            return load_feeds(source, specs, option=option)
        loaded = load_feeds(feeds, specs, option=option)
        loaded.source = described
        return loaded

    def calibrate(
        self, model: ir.Model, calibration: FeedSet | None, stack: ExitStack, reference: Reference | None
    ) -> PruneMethod | None:
        """The calibrated method, with its statistics captured from the calibration feeds (unpermuted model);
        with ``--correct``, the prunings it compares already done (:mod:`.correction_guard`)."""
        options = self.options
        if calibration is None:
            return None
        if options.sequential:
            sequential = SequentialMethod(
                options.method,
                model,
                calibration.feeds,
                damp=options.damp,
                refit=options.refit,
                tune=options.tune,
                rows_per_feature=options.rows_cap,
                dense=load_model(self.facts.input) if options.correct else None,  # the input as on disk
            )
            if not options.correct:
                return sequential
            if needs_external_data(model):
                self.warnings.append(
                    f"{options.spell('correct')}: the model is too large to prune both ways in memory, so the "
                    "corrected model was written without the model-level check against the one-shot one"
                )
                return sequential
            choice = choose_correction(
                model,
                sequential,
                lambda: self.one_shot(model, calibration, stack),
                Guard.for_run(calibration, reference, options.gates),
                self.warnings,
                options.spell("correct"),
            )
            self.facts.correction = choice.entry
            return choice
        return self.one_shot(model, calibration, stack)

    def one_shot(self, model: ir.Model, calibration: FeedSet, stack: ExitStack) -> CalibratedMethod:
        """The calibrated method with every layer's statistics captured in one pass over the unpruned model."""
        options = self.options
        candidates = [r for r in weight_records(model) if r.status == Status.CANDIDATE]
        log.info("capturing the inputs of %d layers on %d calibration feeds", len(candidates), len(calibration))
        started = time.monotonic()
        spill = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sparse24-stats-")))
        stats = collect_stats(
            model,
            candidates,
            calibration.feeds,
            hold_out=options.tune,
            memory_bytes=memory_budget(options.calibration_memory),
            spill=spill,
            hint=calibration.hint,
            rows_per_feature=options.rows_cap,
        )
        log.info("captured in %.1f s", time.monotonic() - started)
        return CalibratedMethod(options.method, stats, damp=options.damp, refit=options.refit, tune=options.tune)

    def permute(
        self, model: ir.Model, method: PruneMethod, calibration: FeedSet | None, reference: Reference | None
    ) -> PruneMethod:
        """Reorder channels (``--permute``), kept only where the data says it helps: :mod:`.channel_order`."""
        if not self.options.permute:
            return method
        guard = Guard.for_run(calibration, reference, self.options.gates)
        return choose_channel_order(model, method, self.options.cap_seconds, guard, self.warnings)

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
        progress = LayerProgress(detail=lambda: getattr(method, "step", ""))
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


def _scratch(out: Path) -> StagedOutput:
    """A staged side file beside OUT for pruned weights on their way to compression; deleted on exit."""
    return StagedOutput(out.with_name(out.name + ".pruned"), external_data=True)
