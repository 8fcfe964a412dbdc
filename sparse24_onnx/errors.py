"""Exit codes and the errors that map to them.

Every command of the tool turns a :class:`Sparse24Error` into one line on stderr
and its exit code; nothing the user can cause ends in a traceback.
"""

from __future__ import annotations

import enum

__all__ = ["BadInput", "ExitCode", "Sparse24Error", "ValidationFailed"]


class ExitCode(enum.IntEnum):
    """Process exit codes shared by all commands (documented in README.md)."""

    OK = 0
    #: ``optimize``: validation error above ``--max-rel-error``.
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
    """The pruned model's outputs moved more than the user allowed."""

    exit_code = ExitCode.FAILED_CHECK
