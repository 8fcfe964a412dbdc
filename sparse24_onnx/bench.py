"""``python -m sparse24_onnx.bench``: the same as ``sparse24 bench`` (kept for scripts that call it so)."""

from __future__ import annotations

import sys

from .cli import command_main


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    return command_main("bench", argv)


if __name__ == "__main__":
    sys.exit(main())
