"""Pass: store every pruned weight in the compressed 2:4 format (see :mod:`sparse24_onnx.compressed`)."""

from __future__ import annotations

import onnx_ir as ir

from ..compressed import InitializerEdits, _all_names, compress_record
from ..weights import Status, weight_records
from .base import InPlacePass, PassResult
from .prune_weights import InMemory, TensorSink

__all__ = ["CompressWeights"]


class CompressWeights(InPlacePass):
    """Replace each pruned weight by its kept values, its metadata and a decompression subgraph.

    A weight that cannot be stored so (a model below opset 9, say) stays dense,
    with the reason in ``record.storage_note``.  Needs :class:`PruneWeights` to
    have run.

    Args:
        sink: Where the values and metadata initializers go; by default memory.
    """

    def __init__(self, sink: TensorSink | None = None) -> None:
        self.sink = sink or InMemory()

    def call(self, model: ir.Model) -> PassResult:
        pruned = [r for r in weight_records(model) if r.status == Status.PRUNED]
        taken = _all_names(model)
        contexts: dict = {}
        edits = InitializerEdits()
        changed = []
        for record in pruned:
            tensor = record.source.tensor
            result = compress_record(model, record, taken, store=self.sink.store, contexts=contexts, edits=edits)
            if isinstance(tensor, ir.ExternalTensor):
                tensor.release()  # unmap the pruned weight (a scratch file): one weight in memory at a time
            if isinstance(result, str):
                record.storage_note = result
                continue
            record.storage = "compressed"
            record.compressed = result
            changed.append(record)
        edits.finish()
        return PassResult(model, modified=bool(changed), weights=changed)
