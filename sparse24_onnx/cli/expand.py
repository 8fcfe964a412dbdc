"""``sparse24 expand IN OUT``: turn a compressed model back into the dense-pruned one (for TensorRT)."""

from __future__ import annotations

import argparse

from .._version import __version__
from .common import emit, progress_to_stderr

EXAMPLES = """examples:
  sparse24 optimize model.onnx model.s24.onnx --format compressed
  sparse24 expand model.s24.onnx model.dense.onnx

exit codes: 0 done (also when nothing is compressed: OUT is then the same model); 2 bad input or usage;
4 internal error."""


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "expand",
        help="expand a --format compressed model into the dense-pruned one (for TensorRT)",
        description="Expand a model written with `optimize --format compressed` into the dense-pruned model "
        "(for TensorRT, whose parser does not fold the decompression subgraph).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="IN", help="a compressed model (never modified)")
    parser.add_argument("output", metavar="OUT", help="where to write the dense-pruned model")
    parser.add_argument(
        "--external-data",
        action="store_true",
        help="store OUT's weights in a side file OUT.data (automatic above the 2 GiB protobuf limit)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--version", action="version", version=f"sparse24-onnx {__version__}")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..pipeline.expand import expand_model

    progress_to_stderr(not args.quiet)
    result = expand_model(args.input, args.output, external_data=args.external_data)
    if not args.quiet:
        emit(result.verdict)
    return 0
