"""onnxruntime sessions: opened quietly, on the best execution provider, with one-line errors.

Every session the tool opens goes through :func:`open_session`: onnxruntime's
own log lines (coloured, multi-line) are silenced, because its message comes
back whole in the one-line error the tool prints.  Sessions run on the CUDA
execution provider when the installed onnxruntime has it (``pip install
'sparse24-onnx[gpu]'`` brings onnxruntime-gpu), else on the CPU;
``SPARSE24_PROVIDERS`` (comma-separated provider names) overrides the choice.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from ..errors import BadInput
from .threads import usable_cores

__all__ = [
    "choose_providers",
    "clean_message",
    "onnxruntime_loads",
    "open_model_session",
    "open_session",
    "run_feeds",
]

#: Preferred execution providers, best first; the CPU is always last.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
#: onnxruntime's severity for fatal messages only (0 verbose ... 4 fatal).
_QUIET = 4


def choose_providers(available: Sequence[str], override: str | None = None) -> list[str]:
    """The execution providers to ask for, best first.

    Args:
        available: ``onnxruntime.get_available_providers()``.
        override: A comma-separated list (``SPARSE24_PROVIDERS``); names not in
            ``available`` are refused rather than silently dropped.
    """
    if override:
        wanted = [name.strip() for name in override.split(",") if name.strip()]
        missing = [name for name in wanted if name not in available]
        if missing:
            raise BadInput(
                f"SPARSE24_PROVIDERS names {', '.join(missing)}, which this onnxruntime lacks "
                f"(it has {', '.join(available)})"
            )
        return wanted
    chosen = [name for name in PREFERRED_PROVIDERS if name in available]
    return chosen or ["CPUExecutionProvider"]


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
# "/onnxruntime_src/onnxruntime/core/...h:91 onnxruntime::Helper::Helper(args) " (where the check is in C++)
_ORT_SOURCE = re.compile(r"\S*onnxruntime_src/\S+:\d+\s+[\w:~<>]+\([^)]*\)\s*")


def clean_message(error: BaseException) -> str:
    """onnxruntime's message in one line, whole, without its error-code prefix and C++ source locations."""
    text = " ".join(str(error).split())
    text = _ORT_SOURCE.sub("", _ORT_PREFIX.sub("", text))
    return text or type(error).__name__


def _ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(_QUIET)
    return ort


def _providers(ort) -> list[str]:
    """The execution providers to ask for: the one place ``SPARSE24_PROVIDERS`` is read."""
    return choose_providers(ort.get_available_providers(), os.environ.get("SPARSE24_PROVIDERS"))


#: onnxruntime's graph rewrites that drop a Relu or Clip before a QuantizeLinear, exact for integer types (the
#: quantization's own range clamps) but not for FP8, which holds negatives: measured with onnxruntime 1.32 on
#: the CPU, an FP8 QDQ MLP's output moved 1.88 (relative L2) instead of 0.31 with them on. The tool's
#: sessions compute the graph as written, so they stay off (docs/deploy.md tells users running FP8 models).
AS_WRITTEN = ["ReluQuantRewrite", "ClipQuantRewrite"]


def _options(ort):
    options = ort.SessionOptions()
    options.log_severity_level = _QUIET
    # One thread per usable core, and none spinning between runs: NumPy's products follow each run on the
    # same cores (see threads.py).
    options.intra_op_num_threads = usable_cores()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(path: str | os.PathLike, *, role: str):
    """An onnxruntime session for the model at ``path`` (by path, so external data works).

    Args:
        role: ``"input"`` or ``"output"``: a model the user gave that onnxruntime
            cannot load is bad input (exit 2); a pruned model that it cannot load
            is a bug and raised as ``RuntimeError``.
    """
    ort = _ort()
    try:
        return ort.InferenceSession(str(path), _options(ort), providers=_providers(ort), disabled_optimizers=AS_WRITTEN)
    except Exception as error:
        reason = clean_message(error)
        if role == "input":
            raise BadInput(
                f"{path}: onnxruntime cannot load the model ({reason}); "
                "pass --no-validate to prune it without validation"
            ) from None
        raise RuntimeError(f"onnxruntime cannot load the pruned model: {reason}") from None


#: Main-graph tensors at least this large are handed to onnxruntime as arrays rather than written.
PROVIDED_BYTES = 1 << 16
#: Element types onnxruntime can take from NumPy arrays.
_PROVIDABLE = frozenset(
    {"float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "bool"}
)


def open_model_session(model, path: str | os.PathLike):
    """An onnxruntime session for an in-memory ``onnx_ir`` model (written to ``path`` first).

    Large main-graph tensors are not written: onnxruntime gets their arrays directly
    (memory-mapped ones stay mapped), so a model of any size, over the 2 GiB protobuf
    limit included, needs neither a copy of its weights on disk nor in memory.  A
    model that onnxruntime cannot load is a bug here (``RuntimeError``).
    """
    from ..modelio.writer import write_embedded

    ort = _ort()
    arrays = {}
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or tensor.nbytes < PROVIDED_BYTES:
            continue
        array = tensor.numpy()
        if array.dtype.name in _PROVIDABLE and array.dtype.isnative:
            arrays[value.name] = np.ascontiguousarray(array)
    write_embedded(model, path, provided=frozenset(arrays))
    options = _options(ort)
    values = [ort.OrtValue.ortvalue_from_numpy(array) for array in arrays.values()]
    if arrays:
        options.add_external_initializers(list(arrays), values)
    try:
        session = ort.InferenceSession(str(path), options, providers=_providers(ort), disabled_optimizers=AS_WRITTEN)
    except Exception as error:
        raise RuntimeError(f"onnxruntime cannot load a model the tool wrote: {clean_message(error)}") from None
    return OwningSession(session, (arrays, values))


class OwningSession:
    """An onnxruntime session together with the arrays its initializers borrow (the OrtValues point into
    them), so that they live exactly as long as the session; everything else is the session's own."""

    def __init__(self, session, borrowed: object) -> None:
        self._session = session
        self._borrowed = borrowed

    def __getattr__(self, name: str):
        return getattr(self._session, name)


def session_provider(session) -> str:
    """The execution provider a session runs on first (``CUDAExecutionProvider``, ``CPUExecutionProvider``)."""
    providers = session.get_providers()
    return providers[0] if providers else "CPUExecutionProvider"


def onnxruntime_loads(path: str | os.PathLike) -> str | None:
    """None when onnxruntime (CPU, no graph optimizations) loads the model, else its one-line reason."""
    ort = _ort()
    options = _options(ort)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        return clean_message(error)
    return None


def run_feeds(
    session, feeds: list[dict[str, np.ndarray]], *, hint: str = "check --inputs/--shape"
) -> list[list[np.ndarray]]:
    """Outputs of ``session`` for every feed, in ``session.get_outputs()`` order.

    Args:
        hint: What the user should look at when onnxruntime refuses the feeds:
            the option that produced them.
    """
    ort = _ort()
    run_options = ort.RunOptions()
    run_options.log_severity_level = _QUIET
    try:
        return [session.run(None, feed, run_options) for feed in feeds]
    except Exception as error:
        reason = clean_message(error)
        raise BadInput(f"onnxruntime cannot run the model on the given inputs ({reason}); {hint}") from None
