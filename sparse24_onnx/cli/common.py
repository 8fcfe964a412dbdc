"""What every subcommand shares: one-line errors, exit codes, progress on stderr, reports.

Importing this module costs nothing but the standard library: ``sparse24 --help``
answers before onnx or onnxruntime is imported.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from ..errors import ExitCode, Sparse24Error

__all__ = ["PREFIX", "ArgumentParser", "emit", "progress_to_stderr", "run_main"]

#: Every error line of every command starts with this.
PREFIX = "sparse24"


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` that reports a usage error in one line and exits with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            import difflib

            options = re.findall(r"'([^']*)'", choice.group(2)) or [o.strip() for o in choice.group(2).split(",")]
            close = difflib.get_close_matches(choice.group(1), options, n=1)
            if close:
                message += f"; did you mean {close[0]}?"
        sys.stderr.write(f"{PREFIX}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(ExitCode.BAD_INPUT)


class Terminated(BaseException):
    """SIGTERM arrived (a CI job's time limit, say): unwinds like Ctrl-C so staged files are removed."""


def _terminate(signum, frame) -> None:
    raise Terminated


class _StderrLines(logging.Handler):
    """Log records as ``[sparse24] message`` lines on stderr (warnings marked as such)."""

    def emit(self, record: logging.LogRecord) -> None:
        label = "warning: " if record.levelno >= logging.WARNING else ""
        sys.stderr.write(f"[{PREFIX}] {label}{record.getMessage()}\n")
        sys.stderr.flush()


def progress_to_stderr(enabled: bool) -> None:
    """Show the library's progress (the ``sparse24_onnx`` logger) on stderr, or nothing but errors."""
    logger = logging.getLogger("sparse24_onnx")
    for handler in list(logger.handlers):
        if isinstance(handler, _StderrLines):
            logger.removeHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.ERROR)
    if enabled:
        logger.addHandler(_StderrLines())


def run_main(body: Callable[[], int]) -> int:
    """Run a command's body; turn errors into one stderr line and an exit code.

    Ctrl-C (exit code 130) and SIGTERM (143) unwind the body, so that a half-written
    OUT and its staging folder are removed rather than left behind.  Set
    ``SPARSE24_DEBUG=1`` to see the traceback of an unexpected error.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        return _run_body(body)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run_body(body: Callable[[], int]) -> int:
    try:
        return int(body())
    except Sparse24Error as error:
        sys.stderr.write(f"{PREFIX}: error: {error}\n")
        return int(error.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write(f"{PREFIX}: interrupted\n")
        return 130
    except Terminated:
        sys.stderr.write(f"{PREFIX}: terminated\n")
        return 143
    except MemoryError:
        sys.stderr.write(f"{PREFIX}: error: out of memory\n")
        return int(ExitCode.INTERNAL_ERROR)
    except Exception as error:
        if os.environ.get("SPARSE24_DEBUG"):
            traceback.print_exc()
        detail = str(error).splitlines()[0] if str(error) else ""
        sys.stderr.write(
            f"{PREFIX}: internal error: {type(error).__name__}: {detail} "
            "(a bug in sparse24-onnx; rerun with SPARSE24_DEBUG=1 for the traceback)\n"
        )
        return int(ExitCode.INTERNAL_ERROR)


def emit(text: str, *, report_on_stdout: bool = False) -> None:
    """Print a table or verdict: on stdout, or on stderr when stdout carries the report (``--report -``)."""
    stream = sys.stderr if report_on_stdout else sys.stdout
    stream.write(text + "\n")
    stream.flush()
