"""``sparse24 optimize IN OUT``: prune a model's weights to 2:4, validate, report."""

from __future__ import annotations

import argparse

from .._version import __version__
from ..choices import ACTIVATION_CALIBRATIONS, FORMATS, METHODS, QUANTIZE, ROWS_PER_FEATURE, TC_SHAPES
from .common import emit, progress_to_stderr

EXAMPLES = """examples:
  sparse24 optimize model.onnx model.sparse.onnx
  sparse24 optimize model.onnx out.onnx --inputs feeds/ --max-rel-error 0.05 --report report.json
  sparse24 optimize model.onnx out.onnx --method sparsegpt --calibration calib/ --inputs heldout/
  sparse24 optimize decoder.onnx out.onnx --shape seq=64 --format compressed

exit codes: 0 done; 1 validation error above --max-rel-error or validation that witnessed nothing
(OUT not written); 2 bad input or usage; 4 internal error."""


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "optimize",
        help="prune a model's MatMul/Gemm/Conv weights to 2:4 and validate it in onnxruntime",
        description="Prune the MatMul/Gemm/Conv weights of an ONNX model to NVIDIA 2:4 structured sparsity "
        "and validate the result in onnxruntime.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="IN", help="the ONNX model to prune (never modified)")
    parser.add_argument("output", metavar="OUT", help="where to write the pruned model")
    parser.add_argument(
        "--method",
        choices=METHODS,
        default=None,
        help="how the kept weights are chosen: |w| (default without --calibration); |w*g| with --gradients; "
        "with --calibration: wanda (|w| * ||x||), sparsegpt (Hessian-aware, kept weights updated; recommended, "
        "the default with --calibration) or admm (mask chosen gradually, kept weights solved for; slower)",
    )
    parser.add_argument(
        "--calibration",
        metavar="PATH",
        help="calibration inputs for wanda/sparsegpt/admm: a .npz keyed by graph input name, or a folder of them",
    )
    parser.add_argument(
        "--correct",
        action="store_true",
        help="prune layer by layer (implies --sequential), each fitted to reproduce the dense model's output "
        "from the pruned model's input where its held-out rows say that helps (GPTAQ's error correction); the "
        "whole model is also pruned in one shot and the one whose outputs move less on held-out calibration "
        "feeds is written. Closest to dense on CNNs and recurrent models; 3-8x the time (docs/methods.md)",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="calibrated methods: prune layers in graph order, each calibrated on the model with the earlier "
        "ones already pruned (slower)",
    )
    parser.add_argument(
        "--refit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="calibrated methods: force (or with --no-refit forbid) refitting each row's kept weights by least "
        "squares (layers with K up to 4096); default: chosen per layer on held-out calibration rows",
    )
    parser.add_argument(
        "--damp",
        type=float,
        metavar="F",
        help="sparsegpt/admm: force this Hessian dampening (a fraction of its mean diagonal); default: chosen "
        "per layer from 0.01, 0.1, 0.5 on held-out calibration rows",
    )
    parser.add_argument(
        "--no-tune",
        action="store_true",
        help="calibrated methods: no per-layer choice on held-out rows; the method as published (damp 0.01 "
        "sparsegpt, 0.1 admm), no fallback to magnitude",
    )
    parser.add_argument(
        "--calibration-memory",
        type=float,
        metavar="GIB",
        help="memory for the layers' calibration statistics; above it they are captured in several passes "
        "(default: a quarter of the machine's memory)",
    )
    parser.add_argument(
        "--rows-per-feature",
        type=int,
        metavar="N",
        help="calibrated methods: X^T X from at most N rows per input feature (K), sampled evenly from each "
        f"feed (default {ROWS_PER_FEATURE}; 0: every row, e.g. all pixels of every image for a convolution)",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE,
        help="also quantize: pruned weights stored as int8 or FP8 (E4M3) behind DequantizeLinear, per output "
        "channel, symmetric, rounded jointly with the pruning; their layers' inputs get Q/DQ pairs with scales "
        "from the calibration feeds: a QDQ model for TensorRT's explicit quantization (needs --calibration)",
    )
    parser.add_argument(
        "--activation-calibration",
        choices=ACTIVATION_CALIBRATIONS,
        default=ACTIVATION_CALIBRATIONS[0],
        help="--quantize: onnxruntime's calibrator for the activations' scales (default %(default)s)",
    )
    loaders = parser.add_argument_group("built-in loaders (for --calibration and --inputs)")
    loaders.add_argument(
        "--tokenizer",
        metavar="TOKENIZER.json",
        help="read a text file given to --calibration/--inputs through this Hugging Face tokenizer: a feed per "
        "line (input_ids, attention_mask, token_type_ids, position_ids by name); needs the [text] extra",
    )
    loaders.add_argument(
        "--seq-len", type=int, metavar="N", help="with --tokenizer: windows of N tokens over the whole text instead"
    )
    loaders.add_argument(
        "--image-size",
        metavar="HxW",
        help="read a folder of images given to --calibration/--inputs, resized to HxW; needs the [images] extra",
    )
    loaders.add_argument("--mean", metavar="M[,M,M]", help="images: per-channel mean on values in [0, 1] (default 0)")
    loaders.add_argument("--std", metavar="S[,S,S]", help="images: per-channel standard deviation (default 1)")
    loaders.add_argument("--layout", choices=("NCHW", "NHWC"), default="NCHW", help="images: axis order (NCHW)")
    loaders.add_argument("--channels", choices=("RGB", "BGR"), default="RGB", help="images: channel order (RGB)")
    loaders.add_argument(
        "--image-dtype",
        choices=("float32", "float16", "uint8"),
        default="float32",
        help="images: element type (uint8: raw 0-255, no normalisation)",
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
        choices=TC_SHAPES,
        default="strict",
        help="skip weights whose shape no Sparse Tensor Core tile fits: strict (default) needs the reduction "
        "length %%16 and the output length %%8, relaxed only the first, off prunes every multiple of 4",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="dense",
        help="dense: pruned weights with their zeros, what TensorRT reads (default); compressed: kept values + "
        "2-bit positions and a decompression subgraph: each pruned weight takes about half its dense size (weights "
        "not pruned, embeddings among them, stay as they are), runs in stock onnxruntime",
    )
    parser.add_argument(
        "--permute",
        action="store_true",
        help="reorder the channels between layer pairs (MatMul/Gemm/Conv chains) so that 2:4 keeps more; "
        "the model's function is unchanged",
    )
    parser.add_argument(
        "--permute-seconds",
        type=float,
        default=None,
        metavar="S",
        help="time cap of the whole permutation phase (search and guard), all layers together (default 60)",
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
        help="validation inputs: a .npz keyed by graph input name, or a folder of them (one feed each); "
        "default: generated inputs",
    )
    validation.add_argument(
        "--shape",
        metavar="NAME=DIMS",
        action="append",
        default=[],
        help="generated inputs: size of an input (input_ids=1x128) or of a named dimension (seq=128); "
        "repeatable. Unset: cache lengths 0, sequence-like dimensions 16, others 1 (with a warning)",
    )
    validation.add_argument(
        "--int-range",
        metavar="[NAME=]LOW:HIGH",
        action="append",
        default=[],
        help="generated inputs: range [LOW, HIGH) of integer inputs, for all or one input (default: the table "
        "size for token ids feeding Gather, all ones for masks, else 0:2)",
    )
    validation.add_argument("--seed", type=int, default=None, help="generated inputs: seed, 0 to 2**63-1 (default 0)")
    validation.add_argument(
        "--num-feeds", type=int, default=None, metavar="N", help="generated inputs: number of feeds (default 1)"
    )
    validation.add_argument(
        "--max-rel-error",
        action="append",
        default=[],
        metavar="[OUTPUT=]X",
        help="fail (exit 1, OUT not written) when the relative L2 error of any output (or of OUTPUT) exceeds X, "
        "or when the validation witnessed nothing; repeatable; no bound by default",
    )
    validation.add_argument(
        "--min-cosine",
        action="append",
        default=[],
        metavar="[OUTPUT=]X",
        help="fail when the cosine similarity of any output (or of OUTPUT) to the original's is below X (an "
        "embedder's gate); repeatable",
    )
    validation.add_argument(
        "--min-top1-agreement",
        action="append",
        default=[],
        metavar="[OUTPUT=]X",
        help="fail when the share of positions whose argmax along the last axis agrees with the original's "
        "is below X for any output (or OUTPUT) that has one (a classifier's gate); repeatable",
    )
    validation.add_argument(
        "--auto-exclude",
        action="store_true",
        help="with a gate (--max-rel-error, --min-cosine, --min-top1-agreement): leave the most sensitive layers "
        "dense, as few as possible, until every gate holds",
    )
    parser.add_argument(
        "--report", metavar="PATH.json", help="write the JSON report there ('-': stdout, the table then on stderr)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")
    parser.add_argument("--version", action="version", version=f"sparse24-onnx {__version__}")
    parser.set_defaults(run=run)
    return parser


def options(args: argparse.Namespace) -> dict[str, object]:
    """The keyword options of :func:`sparse24_onnx.prune_model` that the command line gave."""
    return {
        "method": args.method,
        "calibration": args.calibration,
        "damp": args.damp,
        "sequential": args.sequential,
        "correct": args.correct,
        "refit": args.refit,
        "tune": not args.no_tune,
        "calibration_memory": args.calibration_memory,
        "rows_per_feature": args.rows_per_feature,
        "quantize": args.quantize,
        "activation_calibration": args.activation_calibration,
        "tokenizer": args.tokenizer,
        "seq_len": args.seq_len,
        "image_size": args.image_size,
        "mean": args.mean,
        "std": args.std,
        "layout": args.layout,
        "channels": args.channels,
        "image_dtype": args.image_dtype,
        "gradients": args.gradients,
        "exclude": args.exclude,
        "tc_shapes": args.tc_shapes,
        "format": args.format,
        "permute": args.permute,
        "permute_seconds": args.permute_seconds,
        "external_data": args.external_data,
        "validate": not args.no_validate,
        "inputs": args.inputs,
        "shapes": args.shape,
        "int_ranges": args.int_range,
        "seed": args.seed,
        "num_feeds": args.num_feeds,
        "max_rel_error": args.max_rel_error or None,
        "min_cosine": args.min_cosine or None,
        "min_top1_agreement": args.min_top1_agreement or None,
        "auto_exclude": args.auto_exclude,
        "report": args.report,
        "spelling": "cli",
    }


def run(args: argparse.Namespace) -> int:
    from ..errors import ValidationFailed
    from ..pipeline.prune import prune_model

    progress_to_stderr(not args.quiet)
    on_stdout = args.report == "-"
    try:
        result = prune_model(args.input, args.output, **options(args))  # writes the report too
    except ValidationFailed as failed:
        if failed.result is not None and not args.quiet:
            _present(failed.result, on_stdout)
        raise
    if not args.quiet:
        _present(result, on_stdout)
    return result.exit_code


def _present(result, on_stdout: bool) -> None:
    if result.records:
        emit(result.table() + "\n", report_on_stdout=on_stdout)
    emit(result.verdict, report_on_stdout=on_stdout)
