"""``expand_model``: turn a model written with ``--format compressed`` back into the dense-pruned one.

The library side of ``sparse24 expand`` (see :mod:`sparse24_onnx.modelio.expand`
for what expansion does): for TensorRT, whose parser does not fold the
decompression subgraph.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..modelio.expand import expand_weights, expansion_growth
from ..modelio.load import external_files, needs_external_data
from ..modelio.staging import StagedOutput, check_output_path
from .loading import input_path, load_input

__all__ = ["ExpandResult", "expand_model"]

log = logging.getLogger("sparse24_onnx")


@dataclass
class ExpandResult:
    """What ``expand_model`` did.

    Attributes:
        expanded: Names of the weights expanded (empty when nothing was compressed).
        output: The model written.
        files: Every file written (OUT, and its side file with external data).
        warnings: Notes from loading (a repaired graph, a checker complaint).
    """

    expanded: list[str]
    output: Path
    files: list[Path]
    warnings: list[str]

    @property
    def verdict(self) -> str:
        if self.expanded:
            return f"expanded {len(self.expanded)} compressed weights; wrote {self.output}"
        return f"nothing compressed; wrote {self.output} unchanged in content"


def expand_model(
    model: str | os.PathLike | object, output: str | os.PathLike, *, external_data: bool = False
) -> ExpandResult:
    """Expand every compressed weight of ``model`` and write the dense-pruned model to ``output``.

    Args:
        model: Path of a compressed model (never modified), or an ``onnx.ModelProto``.
        output: Where to write the result (atomically).
        external_data: Store the weights in a side file ``OUT.data`` (automatic above 2 GiB).

    Raises:
        BadInput: The model or its compressed weights cannot be read, or OUT cannot be written.
    """
    warnings: list[str] = []
    with input_path(model) as (path, label):
        out = check_output_path(output, path)
        loaded = load_input(path, warnings)
        input_files = external_files(loaded)
        external = external_data or needs_external_data(loaded, growth=expansion_growth(loaded))
        with StagedOutput(out, external_data=external, input_files=input_files) as staged:
            log.info("loaded %s", label)
            for line in warnings:
                log.warning("%s", line)
            names = expand_weights(loaded, store=staged.store if external else None)
            log.info("saving %s", out)
            staged.save(loaded)
            files = staged.commit()
    return ExpandResult(names, out, files, warnings)
