"""sparse24-onnx: prune ONNX models to NVIDIA 2:4 structured sparsity.

The pipeline as library calls (each also a ``sparse24`` subcommand)::

    import sparse24_onnx

    result = sparse24_onnx.prune_model("model.onnx", "model.sparse.onnx", max_rel_error=0.05)
    print(result.verdict)                       # what was pruned, how far the outputs moved
    result.report                               # the JSON report, as a dict
    sparse24_onnx.check_model("model.sparse.onnx").passed

Errors are exceptions: :class:`BadInput` (bad model, option or path),
:class:`ValidationFailed` (the ``max_rel_error`` gate failed; ``.result`` holds
the report).  The NumPy core (2:4 pruning of plain arrays) is
:mod:`sparse24_onnx.core`.

The names are imported on first use, so that ``sparse24 --help`` does not pay
for onnx and onnxruntime.  Importing the package changes nothing global.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import BadInput, ExitCode, MissingRuntime, Sparse24Error, ValidationFailed

__all__ = [
    "BadInput",
    "CheckResult",
    "ExitCode",
    "ExpandResult",
    "MissingRuntime",
    "PruneResult",
    "Sparse24Error",
    "ValidationFailed",
    "__version__",
    "check_model",
    "expand_model",
    "prune_model",
]

# A library logs, it does not print: without this, Python's last-resort handler would write the
# warnings of every run to stderr of programs that never configured logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_LAZY = {
    "prune_model": "pipeline.prune",
    "PruneResult": "pipeline.outcome",
    "check_model": "pipeline.check",
    "CheckResult": "pipeline.check",
    "expand_model": "pipeline.expand",
    "ExpandResult": "pipeline.expand",
}

if TYPE_CHECKING:
    from .pipeline.check import CheckResult, check_model
    from .pipeline.expand import ExpandResult, expand_model
    from .pipeline.outcome import PruneResult
    from .pipeline.prune import prune_model


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (what ``help()`` and tab completion should offer), not the module's plumbing."""
    return sorted(__all__)
