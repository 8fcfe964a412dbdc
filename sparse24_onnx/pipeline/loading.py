"""Loading the user's model: onnxruntime decides what the ONNX checker disputes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx_ir as ir

from ..errors import BadInput
from ..modelio.load import load_model
from ..runtime.sessions import onnxruntime_loads

__all__ = ["input_path", "load_input", "refuse_unmatched"]


def load_input(path: Path, warnings: list[str]) -> ir.Model:
    """Load the model to work on; repairs and checker complaints go to ``warnings``.

    A model the ONNX checker rejects but onnxruntime loads (nodes out of
    topological order, say, as some fp16 converters leave them) is processed,
    with the checker's complaint as a warning; one that neither accepts is bad
    input, with both reasons.
    """

    def when_rejected(complaint: str) -> None:
        refused = onnxruntime_loads(path)
        if refused is not None:
            raise BadInput(
                f"{path}: the ONNX checker rejects the model ({complaint}) and onnxruntime cannot load it ({refused})"
            )
        if "topologically sorted" in complaint:
            return  # loading sorts the nodes and says so in one line of its own
        warnings.append(f"the ONNX checker rejects the input ({complaint}); onnxruntime loads it, so it was processed")

    return load_model(path, when_rejected=when_rejected, notes=warnings)


@contextlib.contextmanager
def input_path(model: str | os.PathLike | object) -> Iterator[tuple[Path, str]]:
    """A path for a model given as a path or as an ``onnx.ModelProto``, and how to name it in reports.

    A ModelProto is written to a temporary file (removed afterwards) so that the
    same path-based steps (checker, onnxruntime, external data) apply to it.
    """
    if isinstance(model, (str, os.PathLike)):
        yield Path(model), str(model)
        return
    import onnx

    if not isinstance(model, onnx.ModelProto):
        raise BadInput(f"model: expected a path or an onnx.ModelProto, got {type(model).__name__}")
    with tempfile.TemporaryDirectory(prefix="sparse24-input-") as folder:
        path = Path(folder) / "model.onnx"
        try:
            onnx.save(model, str(path))
        except (ValueError, OSError) as error:
            raise BadInput(f"model: cannot serialise the ModelProto ({error})") from None
        yield path, "<onnx.ModelProto>"


def refuse_unmatched(finder, records, option: str) -> None:
    """An ``exclude`` pattern that matches no weight (nor a node using one) is a typo: refuse it, naming some."""
    if not finder.unmatched:
        return
    names = [r.name for r in records][:6]
    shown = ", ".join(names) + (" ..." if len(records) > 6 else "") if names else "the model has none"
    raise BadInput(
        f"{option} {finder.unmatched[0]!r} matches no weight and no node using one (weights: {shown}); "
        "check the pattern"
    )
