"""Pass: prune every candidate weight to 2:4 along its axis, in place."""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import onnx_ir as ir

from ..core import DenseMetrics, compute_metrics_dense
from ..methods import PruneMethod
from ..weights import Status, WeightRecord, data_problem, weight_records
from .base import InPlacePass, PassResult

__all__ = ["InMemory", "PruneWeights", "TensorSink"]

#: ``progress(done, total, record)``, called before each weight is pruned.
Progress = Callable[[int, int, WeightRecord], None]

#: Size of the blocks a large external tensor is streamed in.
BLOCK_BYTES = 64 << 20


class TensorSink(Protocol):
    """Where pruned tensors go (see :class:`~sparse24_onnx.model_io.StagedOutput`)."""

    def store(self, tensor: ir.TensorProtocol) -> ir.TensorProtocol:
        """Keep ``tensor``; return what the model should hold instead (itself, or a reference to it)."""
        ...

    def begin(self, like: ir.TensorProtocol):
        """A block writer (``write``, ``abort``, ``finish``) for a tensor like ``like``, or None."""
        ...


class InMemory:
    """The default sink: pruned tensors stay in memory."""

    def store(self, tensor: ir.TensorProtocol) -> ir.TensorProtocol:
        return tensor

    def begin(self, like: ir.TensorProtocol) -> None:
        return None


class PruneWeights(InPlacePass):
    """Replace each candidate weight by its dense 2:4-pruned version.

    The dense layout (pruned elements stored as zeros) is what TensorRT reads;
    name, dtype, doc string and metadata of each tensor are kept.  Weights with
    NaN or Inf are skipped.  Needs :class:`FindWeights` to have run.

    Memory: when the sink writes to a side file, a weight held in external
    data is streamed through in blocks of whole rows (for methods that allow
    it), and the pages of the source mapping are dropped as each block is
    done, so memory stays near ``BLOCK_BYTES`` whatever the tensor's size.

    Args:
        method: Chooses the kept elements (see :mod:`sparse24_onnx.methods`).
        progress: Optional callback for progress reports.
        sink: Where pruned tensors go; by default they stay in memory.
    """

    def __init__(self, method: PruneMethod, progress: Progress | None = None, sink: TensorSink | None = None) -> None:
        self.method = method
        self.progress = progress
        self.sink = sink or InMemory()

    def call(self, model: ir.Model) -> PassResult:
        todo = [r for r in weight_records(model) if r.status == Status.CANDIDATE]
        for done, record in enumerate(todo):
            if self.progress is not None:
                self.progress(done, len(todo), record)
            tensor = record.source.tensor
            writer = None
            if self.method.blockwise and isinstance(tensor, ir.ExternalTensor):
                writer = self.sink.begin(tensor)
            if writer is not None:
                self._prune_streaming(record, tensor, writer)
            else:
                self._prune(record, tensor)
            if isinstance(tensor, ir.ExternalTensor):
                tensor.release()  # unmap the source: memory holds one weight at a time
        return PassResult(model, modified=bool(todo), weights=todo)

    def _prune(self, record: WeightRecord, tensor: ir.TensorProtocol) -> None:
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
        result = ir.Tensor(
            pruned,
            dtype=tensor.dtype,
            name=tensor.name,
            doc_string=tensor.doc_string,
            metadata_props=dict(tensor.metadata_props) or None,
        )
        record.source.replace(self.sink.store(result))
        record.status = Status.PRUNED

    def _prune_streaming(self, record: WeightRecord, tensor: ir.ExternalTensor, writer) -> None:
        weights = tensor.numpy()  # a read-only view of the mapped side file
        metrics = DenseMetrics()
        for rows in _row_blocks(weights.shape, record.axis, weights.itemsize):
            block = weights[rows]
            problem = data_problem(block)
            pruned = problem or self.method.prune(record, block)
            if isinstance(pruned, str):
                writer.abort()
                record.skip(pruned)
                return
            metrics.add(block, pruned)
            writer.write(pruned)
            _drop_pages(tensor, weights, rows)
        record.metrics = metrics.result()
        record.source.replace(writer.finish())
        record.status = Status.PRUNED


def _row_blocks(shape: tuple[int, ...], axis: int, itemsize: int) -> Iterator[slice]:
    """Slices along axis 0 of about ``BLOCK_BYTES``; multiples of 4 rows when the groups run along axis 0."""
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    step = max(1, BLOCK_BYTES // row_bytes)
    if axis == 0:
        step = max(4, step - step % 4)
    for start in range(0, shape[0], step):
        yield slice(start, min(start + step, shape[0]))


def _drop_pages(tensor: ir.ExternalTensor, weights: np.ndarray, rows: slice) -> None:
    """Tell the kernel the mapped pages of these rows are not needed any more (they stay cached on disk)."""
    raw = getattr(tensor, "raw", None)
    if raw is None or not hasattr(raw, "madvise"):
        return
    row_bytes = weights.nbytes // max(1, weights.shape[0])
    start = (tensor.offset or 0) + rows.start * row_bytes
    stop = (tensor.offset or 0) + rows.stop * row_bytes
    aligned = start - start % mmap.PAGESIZE
    with contextlib.suppress(OSError, ValueError):  # advice only
        raw.madvise(mmap.MADV_DONTNEED, aligned, stop - aligned)
