"""What every command line of the tool shares: one-line errors and exit codes."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from .errors import ExitCode, Sparse24Error

__all__ = ["ArgumentParser", "run_main"]


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` that reports a usage error in one line and exits with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(ExitCode.BAD_INPUT)


class Terminated(BaseException):
    """SIGTERM arrived (a CI job's time limit, say): unwinds like Ctrl-C so staged files are removed."""


def _terminate(signum, frame) -> None:
    raise Terminated


def run_main(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body; turn errors into one stderr line and an exit code.

    Ctrl-C (exit code 130) and SIGTERM (143) unwind the body, so that a half-written
    OUT and its staging folder are removed rather than left behind.  Set
    ``SPARSE24_DEBUG=1`` to see the traceback of an unexpected error.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _run_body(prog, body)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run_body(prog: str, body: Callable[[], int]) -> int:
    try:
        return int(body())
    except Sparse24Error as error:
        sys.stderr.write(f"{prog}: error: {error}\n")
        return int(error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except Terminated:
        sys.stderr.write(f"{prog}: terminated\n")
        return 143
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
