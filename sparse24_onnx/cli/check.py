"""``sparse24 check MODEL``: is every eligible weight 2:4 along its axis? (the CI gate)"""

from __future__ import annotations

import argparse

from .._version import __version__
from ..choices import TC_SHAPES
from .common import emit, progress_to_stderr

EXAMPLES = """examples:
  sparse24 check model.sparse.onnx
  sparse24 check model.sparse.onnx --report check.json --quiet

exit codes: 0 every eligible weight is 2:4 (also when there is none); 1 some are not; 2 bad input or usage."""


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "check",
        help="check that every eligible weight of a model is 2:4 (a CI gate)",
        description="Check that every MatMul/Gemm/Conv weight of an ONNX model that can be 2:4 sparse is.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
        choices=TC_SHAPES,
        help="which shapes count as eligible (see optimize --help); default: the rule the model was optimized "
        "with (its sparse24 metadata), else strict",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="also require 2:4 of the weights the model's sparse24 metadata says were left dense on purpose",
    )
    parser.add_argument(
        "--tensorrt",
        action="store_true",
        help="also check the Q/DQ nodes against TensorRT's explicit-quantization rules (zero points 0, "
        "per-tensor activation scales, weight DequantizeLinear straight into its product, ...)",
    )
    parser.add_argument("--report", metavar="PATH.json", help="write a JSON report ('-': stdout)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--version", action="version", version=f"sparse24-onnx {__version__}")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..pipeline.check import check_model

    progress_to_stderr(not args.quiet)
    result = check_model(
        args.model,
        exclude=args.exclude,
        tc_shapes=args.tc_shapes,
        strict=args.strict,
        tensorrt=args.tensorrt,
        report=args.report,
    )
    if not args.quiet:
        on_stdout = args.report == "-"
        if result.records:
            emit(result.table() + "\n", report_on_stdout=on_stdout)
        emit(result.verdict, report_on_stdout=on_stdout)
    return result.exit_code
