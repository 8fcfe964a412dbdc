"""What every command line of the tool shares: one-line errors and exit codes."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable

from .errors import ExitCode, Sparse24Error

__all__ = ["ArgumentParser", "run_main"]


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` that reports a usage error in one line and exits with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(ExitCode.BAD_INPUT)


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body; turn errors into one stderr line and an exit code.

    Set ``SPARSE24_DEBUG=1`` to see the traceback of an unexpected error.
    """
    try:
        return int(body())
    except Sparse24Error as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        return int(error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except MemoryError:
        sys.stderr.write(f"{prog}: error: out of memory\n")
        return int(ExitCode.INTERNAL_ERROR)
    except Exception as error:
        if os.environ.get("SPARSE24_DEBUG"):
            traceback.print_exc()
        detail = str(error).splitlines()[0] if str(error) else ""
        sys.stderr.write(
            f"{prog}: internal error: {type(error).__name__}: {detail} "
            "(a bug in sparse24-onnx; rerun with SPARSE24_DEBUG=1 for the traceback)\n"
        )
        return int(ExitCode.INTERNAL_ERROR)
