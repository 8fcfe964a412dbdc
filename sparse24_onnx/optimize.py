"""``python -m sparse24_onnx.optimize IN OUT``: prune an ONNX model's weights to 2:4 and validate it.

Runs the pass pipeline (find weights, prune, record provenance) on IN, writes
OUT atomically, and compares both models' outputs in onnxruntime.  Exit codes:
0 done, 1 validation error above ``--max-rel-error`` (OUT is then not written),
2 bad input or usage, 4 internal error.
"""

from __future__ import annotations

import sys
import time
from contextlib import ExitStack
from pathlib import Path

from . import __version__
from .calibration import collect_stats
from .cli import ArgumentParser, run_main
from .errors import BadInput, ExitCode
from .feeds import InputSpec, generate_feeds, infer_int_ranges, load_feeds, parse_int_ranges, parse_shapes
from .methods import (
    GradientMethod,
    MagnitudeMethod,
    Precomputed,
    PruneMethod,
    SequentialMethod,
    SparseGPTMethod,
    WandaMethod,
    load_gradients,
)
from .model_io import (
    StagedOutput,
    check_output_path,
    external_files,
    load_model,
    needs_external_data,
)
from .passes import CompressWeights, FindWeights, PermuteChannels, Pipeline, PruneWeights, RecordProvenance
from .report import check_report_path, format_table, tensor_entry, validation_entry, write_json
from .sensitivity import fit_budget
from .validate import compare_runs, open_session, run_feeds
from .weights import Status, WeightRecord, weight_records

PROG = "sparse24_onnx.optimize"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=f"python -m {PROG}",
        description="Prune the MatMul/Gemm/Conv weights of an ONNX model to NVIDIA 2:4 structured sparsity "
        "and validate the result in onnxruntime.",
        epilog="Exit codes: 0 done; 1 validation error above --max-rel-error (OUT not written); "
        "2 bad input or usage; 4 internal error.",
    )
    parser.add_argument("input", metavar="IN", help="the ONNX model to prune (never modified)")
    parser.add_argument("output", metavar="OUT", help="where to write the pruned model")
    parser.add_argument(
        "--method",
        choices=("magnitude", "gradient", "wanda", "sparsegpt"),
        default="magnitude",
        help="how the kept weights are chosen: |w| (default); |w*g| with --gradients; wanda (|w| * ||x||) or "
        "sparsegpt (Hessian-aware, kept weights updated), both with --calibration",
    )
    parser.add_argument(
        "--calibration",
        metavar="PATH",
        help="calibration inputs for wanda/sparsegpt: a .npz keyed by graph input name, or a folder of them",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="wanda/sparsegpt: prune layers in graph order, each calibrated on the model with the earlier "
        "ones already pruned (slower, usually better)",
    )
    parser.add_argument(
        "--refit",
        action="store_true",
        help="wanda/sparsegpt: once the mask is chosen, refit each row's kept weights by least squares on the "
        "calibration data (layers with K up to 2048)",
    )
    parser.add_argument(
        "--damp",
        type=float,
        default=0.01,
        metavar="F",
        help="sparsegpt: Hessian dampening, as a fraction of its mean diagonal (default 0.01)",
    )
    parser.add_argument(
        "--gradients", metavar="PATH.npz", help="gradients keyed by initializer name (--method gradient)"
    )
    parser.add_argument(
        "--exclude",
        metavar="REGEX",
        action="append",
        default=[],
        help="leave dense the weights whose name, or the name of a node using them, matches (repeatable)",
    )
    parser.add_argument(
        "--tc-shapes",
        choices=("strict", "relaxed", "off"),
        default="strict",
        help="skip weights whose shape no Sparse Tensor Core tile fits: strict (default) needs the reduction "
        "length %%16 and the output length %%8, relaxed only the first, off prunes every multiple of 4",
    )
    parser.add_argument(
        "--format",
        choices=("dense", "compressed"),
        default="dense",
        help="dense: pruned weights with their zeros, what TensorRT reads (default); compressed: kept values + "
        "2-bit positions and a decompression subgraph, about half the size, runs in stock onnxruntime",
    )
    parser.add_argument(
        "--permute",
        action="store_true",
        help="reorder the channels between layer pairs (MatMul/Gemm/Conv chains) so that 2:4 keeps more "
        "magnitude; the model's function is unchanged",
    )
    parser.add_argument(
        "--permute-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="time cap of the permutation search, all layers together (default 60); a search cut by it "
        "depends on the machine's speed, which the report says",
    )
    parser.add_argument(
        "--external-data",
        action="store_true",
        help="store OUT's weights in a side file OUT.data (automatic above the 2 GiB protobuf limit)",
    )
    validation = parser.add_argument_group("validation")
    validation.add_argument("--no-validate", action="store_true", help="skip the onnxruntime comparison")
    validation.add_argument(
        "--inputs",
        metavar="PATH",
        help="a .npz keyed by graph input name, or a folder of them (one feed each); default: random inputs",
    )
    validation.add_argument(
        "--shape",
        metavar="NAME=DIMS",
        action="append",
        default=[],
        help="size of dynamic dimensions for generated inputs: an input (input_ids=1x128) or a named "
        "dimension (seq=128); others are 1 (repeatable)",
    )
    validation.add_argument(
        "--int-range",
        metavar="[NAME=]LOW:HIGH",
        action="append",
        default=[],
        help="range [LOW, HIGH) of generated integer inputs, for all or one input (default: the table size "
        "for token ids feeding Gather, else 0:2)",
    )
    validation.add_argument(
        "--auto-exclude",
        action="store_true",
        help="with --max-rel-error: leave the most sensitive layers dense, as few as possible, until the "
        "validation error is within the bound",
    )
    validation.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")
    validation.add_argument(
        "--num-feeds", type=int, default=1, metavar="N", help="number of generated feeds (default 1)"
    )
    validation.add_argument(
        "--max-rel-error",
        type=float,
        metavar="X",
        help="fail (exit 1, OUT not written) when an output's relative L2 error exceeds X; no bound by default",
    )
    parser.add_argument("--report", metavar="PATH.json", help="write a JSON report (tensors, metrics, validation)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--version", action="version", version=f"sparse24-onnx {__version__}")
    return parser


class _Progress:
    """Progress lines on stderr; per-weight lines at most once a second."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = 0.0

    def say(self, message: str) -> None:
        if self.enabled:
            sys.stderr.write(f"[sparse24] {message}\n")
            sys.stderr.flush()

    def weight(self, done: int, total: int, record: WeightRecord) -> None:
        now = time.monotonic()
        if self.enabled and (now - self.last >= 1.0 or done == 0):
            self.last = now
            shape = "x".join(map(str, record.shape))
            self.say(f"pruning {done + 1}/{total}: {record.name} ({shape})")


def _method(args, stats=None) -> PruneMethod:
    if args.method in ("wanda", "sparsegpt"):
        if args.method == "wanda":
            return WandaMethod(stats or {}, refit=args.refit, damp=args.damp)
        return SparseGPTMethod(stats or {}, damp=args.damp, refit=args.refit)
    if args.calibration:
        raise BadInput("--calibration is used with --method wanda or sparsegpt")
    if args.method == "gradient":
        if not args.gradients:
            raise BadInput("--method gradient needs --gradients PATH.npz (gradients keyed by initializer name)")
        return GradientMethod(load_gradients(args.gradients))
    if args.gradients:
        raise BadInput("--gradients is only used with --method gradient")
    return MagnitudeMethod()


def _check_options(args) -> None:
    if (args.sequential or args.refit) and args.method not in ("wanda", "sparsegpt"):
        raise BadInput("--sequential and --refit are used with --method wanda or sparsegpt")
    if args.method in ("wanda", "sparsegpt") and not args.calibration:
        raise BadInput(f"--method {args.method} needs --calibration PATH (.npz keyed by input name, or a folder)")
    if not 0 <= args.damp < 1:
        raise BadInput("--damp must be in [0, 1)")
    if args.max_rel_error is not None and not args.max_rel_error >= 0:
        raise BadInput("--max-rel-error must be a number >= 0")
    if args.auto_exclude and (args.max_rel_error is None or args.no_validate):
        raise BadInput("--auto-exclude needs --max-rel-error and validation")
    if args.max_rel_error is not None and args.no_validate:
        raise BadInput("--max-rel-error needs validation; drop --no-validate")
    if not args.permute_seconds > 0:
        raise BadInput("--permute-seconds must be a positive number")
    if args.num_feeds < 1:
        raise BadInput("--num-feeds must be at least 1")
    check_report_path(args.report)


def _run(args) -> int:
    _check_options(args)
    find = FindWeights(args.exclude, args.tc_shapes)
    inp = Path(args.input)
    out = check_output_path(args.output, inp)
    progress = _Progress(not args.quiet)
    method = _method(args)
    shapes = parse_shapes(args.shape)
    default_range, int_ranges = parse_int_ranges(args.int_range)

    progress.say(f"loading {inp}")
    model = load_model(inp)
    input_files = external_files(model)
    if args.auto_exclude and needs_external_data(model):
        raise BadInput(
            "--auto-exclude works on models under 2 GiB: each of its trial runs writes the whole model into one "
            "file for onnxruntime; leave layers dense with --exclude instead"
        )

    validate = not args.no_validate
    calibration = None
    # One onnxruntime session on the input serves both the calibration feeds' specs and validation.
    session = open_session(inp, role="input") if args.calibration or validate else None
    if args.calibration:
        calibration = load_feeds(args.calibration, InputSpec.from_session(session), option="--calibration")
    if validate:
        progress.say("running the original model in onnxruntime")
        specs = InputSpec.from_session(session)
        if args.inputs:
            feeds = load_feeds(args.inputs, specs)
            source = str(args.inputs)
        else:
            ranges = {**infer_int_ranges(model), **int_ranges}
            feeds = generate_feeds(
                specs,
                shapes=shapes,
                int_ranges=ranges,
                default_int_range=default_range,
                seed=args.seed,
                count=args.num_feeds,
            )
            source = f"generated (seed {args.seed})"
        output_names = [o.name for o in session.get_outputs()]
        reference = run_feeds(session, feeds)
    del session  # free the input's session (its copy of the weights) before pruning

    external = args.external_data or needs_external_data(model)
    comparisons = None
    validation = None
    exit_code = ExitCode.OK
    written: list[Path] = []
    with StagedOutput(out, external_data=external, input_files=input_files) as staged, ExitStack() as stack:
        compressed = args.format == "compressed"
        analysis = [find]
        if args.permute:
            analysis.append(PermuteChannels(seconds=args.permute_seconds))
        Pipeline(*analysis)(model)
        if calibration is not None and args.sequential:
            method = SequentialMethod(args.method, model, calibration, damp=args.damp, refit=args.refit)
        elif calibration is not None:
            progress.say(f"capturing layer inputs on {len(calibration)} calibration feeds")
            candidates = [r for r in weight_records(model) if r.status == Status.CANDIDATE]
            stats = collect_stats(model, candidates, calibration, hessian=True)
            method = _method(args, stats)
        budget = None
        if args.auto_exclude:
            budget, method = _fit_budget(model, method, feeds, reference, output_names, args.max_rel_error, progress)
        prune_sink = staged
        if compressed:
            # Pruned weights wait for CompressWeights in memory or, when the model is
            # large enough for external data, in a scratch side file (never committed):
            # memory then stays bounded by one weight, as on the dense route.
            prune_sink = stack.enter_context(_scratch(out)) if external else None
        rewrite = [PruneWeights(method, progress=progress.weight, sink=prune_sink)]
        if compressed:
            rewrite.append(CompressWeights(sink=staged))
        Pipeline(*rewrite, RecordProvenance(method.name, args.format, args.tc_shapes))(model)
        records = weight_records(model)
        progress.say(f"saving {out}" + (f" with external data {out.name}.data" if external else ""))
        staged.save(model)
        if validate:
            progress.say("running the pruned model in onnxruntime")
            session = open_session(staged.path, role="output")
            candidate = run_feeds(session, feeds)
            del session
            comparisons = compare_runs(output_names, reference, candidate)
            validation = validation_entry(comparisons, feeds=len(feeds), source=source, bound=args.max_rel_error)
            if validation["passed"] is False:
                exit_code = ExitCode.FAILED_CHECK
        if exit_code == ExitCode.OK:
            written = staged.commit()

    pruned = [r for r in records if r.status == Status.PRUNED]
    if args.report:
        write_json(
            args.report,
            {
                "command": "optimize",
                "input": str(inp),
                "output": str(out) if written else None,
                "files": [str(p) for p in written],
                "method": method.name,
                "format": args.format,
                "summary": _summary(records, [inp, *sorted(input_files)], written),
                "tensors": [tensor_entry(r) for r in records],
                "validation": validation,
                "auto_exclude": None
                if budget is None
                else {
                    "max_rel_error": args.max_rel_error,
                    "dense": budget.dense,
                    "error": budget.error,
                    "sensitivity": budget.sensitivity,
                    "evaluations": budget.evaluations,
                },
                "exit_code": int(exit_code),
            },
        )
    if not args.quiet:
        if records:
            print(format_table(records, comparisons))
            print()
        print(_verdict(records, pruned, validation, out if written else None))
    if exit_code == ExitCode.FAILED_CHECK:
        worst = validation["worst_rel_l2_error"]
        sys.stderr.write(
            f"{PROG}: validation failed: relative L2 error {worst:.4g} exceeds --max-rel-error "
            f"{args.max_rel_error:g}; {out} was not written\n"
        )
    return int(exit_code)


def _fit_budget(model, method, feeds, reference, output_names, bound, progress):
    """Measure each candidate's sensitivity and leave the fewest most sensitive ones dense (see sensitivity.py)."""
    candidates = [r for r in weight_records(model) if r.status == Status.CANDIDATE]
    results = {}
    for record in candidates:
        pruned = method.prune(record, record.source.tensor.numpy())
        if isinstance(pruned, str):
            continue
        results[record.name] = pruned
    candidates = [r for r in candidates if r.name in results]
    progress.say(f"measuring the sensitivity of {len(candidates)} layers")
    budget = fit_budget(model, candidates, results, feeds, reference, output_names, bound, progress=progress.say)
    rank = {name: i + 1 for i, name in enumerate(budget.dense)}
    for record in candidates:
        if record.name in rank:
            alone = budget.sensitivity[record.name]
            record.skip(
                f"left dense by --auto-exclude: pruned alone it moves the output by {alone:.3g} "
                f"(most sensitive {rank[record.name]} of {len(candidates)})",
                deliberate=True,
            )
    return budget, Precomputed(method, results)


def _summary(records: list[WeightRecord], inputs: list[Path], written: list[Path]) -> dict[str, int | None]:
    pruned = [r for r in records if r.status == Status.PRUNED]
    return {
        "weights_found": len(records),
        "pruned": len(pruned),
        "skipped": len(records) - len(pruned),
        "stored_compressed": sum(r.storage == "compressed" for r in pruned),
        "pruned_elements": sum(r.metrics.pruned_count for r in pruned if r.metrics),
        "total_elements": sum(r.metrics.total_count for r in pruned if r.metrics),
        "input_bytes": sum(p.stat().st_size for p in inputs),
        "output_bytes": sum(p.stat().st_size for p in written) if written else None,
    }


def _verdict(records, pruned, validation, written: Path | None) -> str:
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
        if bound is None:
            verdict = "no bound set"
        else:
            verdict = f"within {bound:g}" if validation["passed"] else f"ABOVE --max-rel-error {bound:g}"
        head += f"; worst output relative L2 error {worst:.4g} ({verdict})"
    else:
        head += "; not validated"
    head += f"; wrote {written}" if written else "; nothing written"
    return head


def _scratch(out: Path) -> StagedOutput:
    """A staged side file beside OUT for pruned weights on their way to compression; deleted on exit."""
    return StagedOutput(out.with_name(out.name + ".pruned"), external_data=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
