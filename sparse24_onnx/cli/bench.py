"""``sparse24 bench MODEL``: measure what 2:4 sparsity buys on an NVIDIA GPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._version import __version__

EXAMPLES = """examples:
  sparse24 bench model.sparse.onnx --tokens 2048
  sparse24 bench model.sparse.onnx --backend tensorrt --precision fp16 --shape input_ids=1x512

exit codes: 0 done; 2 bad input or usage; 3 a needed runtime (CUDA GPU, PyTorch, TensorRT) is missing."""


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "bench",
        help="measure on an NVIDIA GPU what 2:4 buys (cuSPARSELt per layer, or TensorRT engines)",
        description="Measure the speedup of a 2:4-pruned ONNX model's layers (PyTorch/cuSPARSELt) or engine "
        "(TensorRT) on an NVIDIA GPU.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="a pruned model (dense-pruned or compressed)")
    parser.add_argument(
        "--backend",
        choices=("torch", "tensorrt"),
        default="torch",
        help="torch: each 2:4 layer's GEMM dense vs cuSPARSELt (default); tensorrt: dense vs sparse-weights engines",
    )
    parser.add_argument("--tokens", type=int, default=2048, help="torch: activation rows per product (default 2048)")
    parser.add_argument(
        "--dtype", action="append", choices=("float16", "bfloat16"), help="torch: dtypes to time (default both)"
    )
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp16", help="tensorrt: build precision")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=DIMS", help="tensorrt: input shapes")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs before timing (default 10)")
    parser.add_argument(
        "--iterations", type=int, default=100, help="timed runs; median and p90 are reported (default 100)"
    )
    parser.add_argument("--report", metavar="PATH.json", help="write the measurements as JSON")
    parser.add_argument("--version", action="version", version=f"sparse24-onnx {__version__}")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..errors import BadInput, ExitCode
    from ..gpu.harness import format_torch_report, run_tensorrt, run_torch, sparse_layers
    from ..report import check_report_path, write_json

    if args.tokens < 1 or args.warmup < 0 or args.iterations < 1:
        raise BadInput("--tokens and --iterations must be positive, --warmup not negative")
    check_report_path(args.report)
    model = Path(args.model)
    if args.backend == "torch":
        layers = sparse_layers(model)
        if not layers:
            raise BadInput(f"{model}: no 2:4 MatMul/Gemm weight found; prune it with sparse24 optimize first")
        report = run_torch(layers, args.tokens, args.dtype or ["float16", "bfloat16"], args.warmup, args.iterations)
        print(format_torch_report(report))
        if args.report:
            document = asdict(report)
            for entry, result in zip(document["layers"], report.layers, strict=True):
                entry["speedup"] = result.speedup
            document["totals"] = report.totals()
            write_json(args.report, {"command": "bench", "backend": "torch", **document})
        return int(ExitCode.OK)
    from ..runtime.feeds import parse_shapes

    result = run_tensorrt(model, args.precision, args.warmup, args.iterations, parse_shapes(args.shape))
    d, s = result["dense"], result["sparse"]
    print(f"device: {result['device']}; TensorRT {result['tensorrt']}; precision {result['precision']}")
    print(f"dense engine : median {d['timing']['median_ms']:.4f} ms, p90 {d['timing']['p90_ms']:.4f} ms")
    print(f"sparse engine: median {s['timing']['median_ms']:.4f} ms, p90 {s['timing']['p90_ms']:.4f} ms")
    print(f"speedup: {result['speedup']:.3f}x")
    print(f"eligible for sparse math: {', '.join(s['log']['eligible']) or 'none reported'}")
    print(f"ran sparse: {', '.join(s['log']['picked'] or s['sparse_tactics']) or 'none'}")
    if args.report:
        write_json(args.report, {"command": "bench", "backend": "tensorrt", **result})
    return int(ExitCode.OK)
