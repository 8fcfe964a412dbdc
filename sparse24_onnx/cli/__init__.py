"""The ``sparse24`` command: ``optimize``, ``check``, ``expand``, ``bench``.

Each subcommand is one module here, doing nothing but parsing its options,
calling the library (:mod:`sparse24_onnx.pipeline`, :mod:`sparse24_onnx.gpu`)
and presenting the result.  Parsing imports only the standard library, so
``--help`` answers at once; the library is imported when a command runs.
"""

from __future__ import annotations

import sys

from .._lazy_imports import defer_sympy
from .._version import __version__
from . import bench, check, expand, optimize
from .common import PREFIX, ArgumentParser, run_main

__all__ = ["build_parser", "main"]

_COMMANDS = (optimize, check, expand, bench)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog=PREFIX,
        description="Prune ONNX models to NVIDIA 2:4 structured sparsity, check them, and measure what it buys.",
        epilog="Run 'sparse24 COMMAND --help' for a command's options. Exit codes: 0 done; 1 validation or "
        "check failed; 2 bad input or usage; 3 a needed runtime is missing (bench); 4 internal error.",
    )
    parser.add_argument("--version", action="version", version=f"sparse24-onnx {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for module in _COMMANDS:
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``sparse24 COMMAND ...``; returns the exit code.

    Only the command's own process defers sympy (a quarter of a short run's start-up, see
    :mod:`sparse24_onnx._lazy_imports`); importing the library leaves ``sys.modules`` alone.
    """
    defer_sympy()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return run_main(lambda: args.run(args))


def command_main(name: str, argv: list[str] | None = None) -> int:
    """``python -m sparse24_onnx.<name> ...``: the same as ``sparse24 <name> ...``."""
    return main([name, *(sys.argv[1:] if argv is None else argv)])
