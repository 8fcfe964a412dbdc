"""Exit codes and the exceptions that map to them.

The library raises these; every command turns a :class:`Sparse24Error` into
one line on stderr and its exit code, so nothing the user can cause ends in a
traceback.
"""

from __future__ import annotations

import enum

__all__ = ["BadInput", "ExitCode", "MissingRuntime", "Sparse24Error", "ValidationFailed"]


class ExitCode(enum.IntEnum):
    """Process exit codes shared by all commands (documented in README.md)."""

    OK = 0
    #: ``optimize``: validation error above ``--max-rel-error`` (or nothing witnessed); ``check``: not 2:4.
    FAILED_CHECK = 1
    #: Bad input or usage: unreadable or invalid model, bad option, unwritable output.
    BAD_INPUT = 2
    #: A needed runtime (GPU, TensorRT, torch) is missing.
    MISSING_DEPENDENCY = 3
    #: A bug in sparse24-onnx; rerun with ``SPARSE24_DEBUG=1`` for the traceback.
    INTERNAL_ERROR = 4


class Sparse24Error(Exception):
    """An error with a one-line message meant for the user and an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR


class BadInput(Sparse24Error):
    """The input model, an option or the output location cannot be used."""

    exit_code = ExitCode.BAD_INPUT


class ValidationFailed(Sparse24Error):
    """The pruned model's outputs moved more than the user allowed, or the validation witnessed nothing.

    Attributes:
        result: The run's result (``result.report`` is the full report, with
            ``validation.passed`` false); OUT was not written.
    """

    exit_code = ExitCode.FAILED_CHECK

    def __init__(self, message: str, *, result: object = None) -> None:
        super().__init__(message)
        self.result = result


class MissingRuntime(Sparse24Error):
    """A runtime a GPU benchmark needs (CUDA GPU, PyTorch, TensorRT) is not there."""

    exit_code = ExitCode.MISSING_DEPENDENCY
