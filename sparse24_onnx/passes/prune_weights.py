"""Pass: prune every candidate weight to 2:4 along its axis, in place."""

from __future__ import annotations

from collections.abc import Callable

import onnx_ir as ir

from ..core import compute_metrics_dense
from ..methods import PruneMethod
from ..weights import Status, WeightRecord, data_problem, weight_records
from .base import InPlacePass, PassResult

__all__ = ["PruneWeights"]

#: ``progress(done, total, record)``, called before each weight is pruned.
Progress = Callable[[int, int, WeightRecord], None]


class PruneWeights(InPlacePass):
    """Replace each candidate weight by its dense 2:4-pruned version.

    The dense layout (pruned elements stored as zeros) is what TensorRT reads;
    name, dtype, doc string and metadata of each tensor are kept.  Weights with
    NaN or Inf are skipped.  Needs :class:`FindWeights` to have run.

    Args:
        method: Chooses the kept elements (see :mod:`sparse24_onnx.methods`).
        progress: Optional callback for progress reports.
    """

    def __init__(self, method: PruneMethod, progress: Progress | None = None) -> None:
        self.method = method
        self.progress = progress

    def call(self, model: ir.Model) -> PassResult:
        todo = [r for r in weight_records(model) if r.status == Status.CANDIDATE]
        for done, record in enumerate(todo):
            if self.progress is not None:
                self.progress(done, len(todo), record)
            self._prune(record)
        return PassResult(model, modified=bool(todo), weights=todo)

    def _prune(self, record: WeightRecord) -> None:
        tensor = record.source.tensor
        weights = tensor.numpy()
        problem = data_problem(weights)
        if problem:
            record.skip(problem)
            return
        pruned = self.method.prune(record, weights)
        if isinstance(pruned, str):
            record.skip(pruned)
            return
        record.metrics = compute_metrics_dense(weights, pruned, record.axis)
        record.source.replace(
            ir.Tensor(
                pruned,
                dtype=tensor.dtype,
                name=tensor.name,
                doc_string=tensor.doc_string,
                metadata_props=dict(tensor.metadata_props),
            )
        )
        record.status = Status.PRUNED
