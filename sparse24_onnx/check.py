"""``python -m sparse24_onnx.check MODEL``: is every eligible weight 2:4 along its axis?

The gate a CI pipeline runs on a converted model.  It finds weights with the
same rules as ``optimize`` (same axes, same skip reasons) and checks each one.
Weights that ``optimize`` left dense on purpose (``--exclude``, recorded in the
model's ``sparse24`` metadata) are accepted unless ``--strict``.

Exit codes: 0 every eligible weight is 2:4; 1 some are not; 2 bad input.
"""

from __future__ import annotations

import sys

import onnx_ir as ir

from . import __version__
from .cli import ArgumentParser, run_main
from .compressed import compressed_entries, read_sparse_weights
from .core import count_dense_groups
from .errors import BadInput, ExitCode
from .model_io import load_model
from .passes import FindWeights, read_provenance
from .passes.find_weights import TC_SHAPES
from .report import check_report_path, format_table, tensor_entry, write_json
from .weights import Status, WeightRecord, data_problem

PROG = "sparse24_onnx.check"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=f"python -m {PROG}",
        description="Check that every MatMul/Gemm/Conv weight of an ONNX model that can be 2:4 sparse is.",
        epilog="Exit codes: 0 every eligible weight is 2:4; 1 some are not; 2 bad input or usage.",
    )
    parser.add_argument("model", metavar="MODEL", help="the ONNX model to check")
    parser.add_argument(
        "--exclude",
        metavar="REGEX",
        action="append",
        default=[],
        help="do not require 2:4 of weights whose name, or the name of a node using them, matches (repeatable)",
    )
    parser.add_argument(
        "--tc-shapes",
        choices=("strict", "relaxed", "off"),
        help="which shapes count as eligible (see optimize --help); default: the rule the model was optimized "
        "with (its sparse24 metadata), else strict",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="also require 2:4 of the weights the model's sparse24 metadata says were left dense on purpose",
    )
    parser.add_argument("--report", metavar="PATH.json", help="write a JSON report")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--version", action="version", version=f"sparse24-onnx {__version__}")
    return parser


def check_records(records: list[WeightRecord], intended_dense: dict[str, str]) -> None:
    """Set each candidate's status to 2:4 or not 2:4 (with the share of dense groups), in place."""
    for record in records:
        if record.status != Status.CANDIDATE:
            continue
        tensor = record.source.tensor
        weights = tensor.numpy()
        problem = data_problem(weights)
        dense = 0 if problem else count_dense_groups(weights, record.axis)
        groups = weights.size // 4
        del weights
        if isinstance(tensor, ir.ExternalTensor):
            tensor.release()  # unmap it: one weight's pages in memory at a time
        if problem:
            record.skip(problem)
            continue
        if dense == 0:
            record.status = Status.SPARSE
            continue
        if record.name in intended_dense:
            record.skip(f"left dense on purpose by optimize ({intended_dense[record.name]})", deliberate=True)
            continue
        record.status = Status.NOT_SPARSE
        record.reason = f"{dense} of {groups} groups of 4 ({100 * dense / groups:.1f}%) have more than 2 non-zeros"


def compressed_records(model) -> list[WeightRecord]:
    """Records for the weights stored in the compressed format (2:4 when their metadata is well formed)."""
    try:
        entries = compressed_entries(model)
        weights = read_sparse_weights(model)
    except (ValueError, KeyError, TypeError) as error:
        raise BadInput(f"{model.graph.name}: unreadable compressed weights ({error})") from None
    records = []
    for name, sparse in weights.items():
        entry = entries[name]
        record = WeightRecord(
            name=name,
            source=None,
            graph=str(entry.get("graph", "")),
            shape=sparse.shape,
            dtype=str(entry.get("dtype", "")),
            axis=sparse.axis,
            storage="compressed",
        )
        invalid = sparse.invalid_groups()
        if invalid:
            record.status = Status.NOT_SPARSE
            record.reason = f"{invalid} of {sparse.num_groups} groups have an invalid position code"
        else:
            record.status = Status.SPARSE
            record.reason = "stored compressed: 2 values and their positions per group of 4"
        records.append(record)
    return records


def _run(args) -> int:
    FindWeights(args.exclude)  # refuse a bad --exclude before loading the model
    check_report_path(args.report)
    model = load_model(args.model)
    provenance = read_provenance(model)
    rule = args.tc_shapes or provenance.get("tc_shapes") or "strict"
    if rule not in TC_SHAPES:
        rule = "strict"
    records = FindWeights(args.exclude, rule)(model).weights
    intended = {} if args.strict else provenance.get("dense", {})
    check_records(records, intended if isinstance(intended, dict) else {})
    records += compressed_records(model)

    failing = [r for r in records if r.status == Status.NOT_SPARSE]
    sparse = [r for r in records if r.status == Status.SPARSE]
    exit_code = ExitCode.FAILED_CHECK if failing else ExitCode.OK
    if args.report:
        write_json(
            args.report,
            {
                "command": "check",
                "model": str(args.model),
                "summary": {
                    "weights_found": len(records),
                    "sparse": len(sparse),
                    "not_sparse": len(failing),
                    "skipped": len(records) - len(sparse) - len(failing),
                },
                "tensors": [tensor_entry(r) for r in records],
                "exit_code": int(exit_code),
            },
        )
    if not args.quiet:
        if records:
            print(format_table(records, None))
            print()
        if not records:
            print("no MatMul/Gemm/Conv weight held as a constant: nothing to check")
        elif failing:
            print(f"FAIL: {len(failing)} of {len(failing) + len(sparse)} eligible weights are not 2:4")
        else:
            print(f"OK: all {len(sparse)} eligible weights are 2:4 ({len(records) - len(sparse)} skipped)")
    return int(exit_code)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_main(PROG, lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
