"""Pass: prune every candidate weight to 2:4 along its axis, in place."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import onnx_ir as ir

from ..core import DenseMetrics
from ..core.quantized import QuantGrid
from .base import NeedsWeights, PassResult
from .weights import NOT_FINITE, Declined, Status, WeightRecord, weight_records

__all__ = ["InMemory", "PruneMethod", "PruneWeights", "TensorSink"]

#: ``progress(done, total, record)``, called before each weight is pruned.
Progress = Callable[[int, int, WeightRecord], None]

#: Size of the blocks a large external tensor is streamed in.
BLOCK_BYTES = 64 << 20


class PruneMethod(Protocol):
    """What the prune pass needs from a method."""

    #: Name recorded in the report and the model's provenance.
    name: str
    #: Whether kept values stay as they were (only the mask is chosen): faster metrics.
    values_kept: bool
    #: Whether any block of whole rows (along axis 0, in multiples of 4 when the
    #: groups run along axis 0) can be pruned on its own: large external tensors
    #: are then streamed block by block.
    blockwise: bool

    def prune(self, record: WeightRecord, weights: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The dense 2:4 version of ``weights`` along ``record.axis``.

        ``out``, when given, is a buffer of the weights' shape and dtype to write into.

        Raises:
            Declined: The method cannot prune this weight (the reason is the skip's).
        """
        ...


class TensorSink(Protocol):
    """Where pruned tensors go (see :class:`~sparse24_onnx.modelio.staging.StagedOutput`)."""

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


class PruneWeights(NeedsWeights):
    """Replace each candidate weight by its dense 2:4-pruned version.

    The dense layout (pruned elements stored as zeros) is what TensorRT reads;
    name, dtype, doc string and metadata of each tensor are kept.  Weights with
    NaN or Inf are skipped (found by the metrics, not by a pass of their own).
    Needs :class:`FindWeights` to have run.

    Memory: when the sink writes to a side file, a weight held in external
    data is streamed through in blocks of whole rows (for methods that allow
    it), read into one reused buffer and pruned into another, so memory stays
    near ``2 * BLOCK_BYTES`` whatever the tensor's size.

    Args:
        method: Chooses the kept elements (see :mod:`sparse24_onnx.methods`).
        progress: Optional callback for progress reports.
        sink: Where pruned tensors go; by default they stay in memory.
    """

    def __init__(self, method: PruneMethod, progress: Progress | None = None, sink: TensorSink | None = None) -> None:
        self.method = method
        self.progress = progress
        self.sink = sink or InMemory()
        self._buffers: tuple[np.ndarray, np.ndarray] | None = None

    def call(self, model: ir.Model) -> PassResult:
        todo = [r for r in weight_records(model) if r.status == Status.CANDIDATE]
        if getattr(self.method, "sequential", False):
            todo = in_graph_order(model, todo)
        for done, record in enumerate(todo):
            if self.progress is not None:
                self.progress(done, len(todo), record)
            tensor = record.source.tensor
            writer = None
            if self.method.blockwise and _streamable(tensor):
                writer = self.sink.begin(tensor)
            if writer is not None:
                self._prune_streaming(record, tensor, writer)
            else:
                self._prune(record, tensor)
            if isinstance(tensor, ir.ExternalTensor):
                tensor.release()  # unmap the source, if it was mapped
        self._buffers = None
        return PassResult(model, modified=bool(todo), weights=todo)

    def _prune(self, record: WeightRecord, tensor: ir.TensorProtocol) -> None:
        stored = tensor.numpy()
        grid = record.grid
        weights = stored if grid is None else grid.dequantize(stored)
        try:
            pruned = self.method.prune(record, weights)
        except Declined as declined:
            record.skip(declined.reason)
            return
        if grid is not None:
            stored = requantize(grid, stored, pruned, values_kept=self.method.values_kept)
            pruned = grid.dequantize(stored)
        metrics = DenseMetrics()
        metrics.add(weights, pruned, values_kept=self.method.values_kept and grid is None)
        if not metrics.finite:
            record.skip(NOT_FINITE)
            return
        result = ir.Tensor(
            pruned if grid is None else stored,
            dtype=tensor.dtype,
            name=tensor.name,
            doc_string=tensor.doc_string,
            metadata_props=dict(tensor.metadata_props) or None,
        )
        _pruned(record, metrics, self.sink.store(result))

    def _prune_streaming(self, record: WeightRecord, tensor: ir.ExternalTensor, writer) -> None:
        dtype = np.dtype(tensor.dtype.numpy()).newbyteorder("<")
        shape = tuple(int(d) for d in tensor.shape)
        row_items = int(np.prod(shape[1:], dtype=np.int64))
        source, target = self._block_buffers(row_items * dtype.itemsize * _block_rows(shape, record.axis, dtype))
        metrics = DenseMetrics()
        with open(tensor.path, "rb") as file:
            file.seek(tensor.offset or 0)
            for rows in _row_blocks(shape, record.axis, dtype):
                count = (rows.stop - rows.start) * row_items
                block = source[: count * dtype.itemsize].view(dtype).reshape((rows.stop - rows.start, *shape[1:]))
                if file.readinto(memoryview(block).cast("B")) != block.nbytes:
                    writer.abort()
                    record.skip(f"its external data in {tensor.location} ends early")
                    return
                pruned = target[: block.nbytes].view(dtype).reshape(block.shape)
                grid = record.grid
                try:
                    if grid is None:
                        result = self.method.prune(record, block, out=pruned)
                        original = block
                    else:  # through the real values: rows of the grid, requantized into the output buffer
                        grid = grid.rows(rows.start, rows.stop, shape)
                        original = grid.dequantize(block)
                        result = self.method.prune(record, original)
                except Declined as declined:
                    writer.abort()
                    record.skip(declined.reason)
                    return
                if grid is not None:
                    pruned[...] = requantize(grid, block, result, values_kept=self.method.values_kept)
                    result = grid.dequantize(pruned)
                metrics.add(original, result, values_kept=self.method.values_kept and grid is None)
                if not metrics.finite:
                    writer.abort()
                    record.skip(NOT_FINITE)
                    return
                writer.write(pruned if grid is not None else result)
        _pruned(record, metrics, writer.finish())

    def _block_buffers(self, nbytes: int) -> tuple[np.ndarray, np.ndarray]:
        """Two byte buffers of at least ``nbytes``, kept across weights so their pages are reused."""
        if self._buffers is None or self._buffers[0].nbytes < nbytes:
            self._buffers = (np.empty(nbytes, dtype=np.uint8), np.empty(nbytes, dtype=np.uint8))
        return self._buffers


def _pruned(record: WeightRecord, metrics: DenseMetrics, stored: ir.TensorProtocol) -> None:
    """The tail both routes share: the metrics, the tensor in the model, the status."""
    record.metrics = metrics.result()
    record.source.replace(stored)
    record.status = Status.PRUNED


def stored_tensor(record: WeightRecord, tensor: ir.TensorProtocol, pruned: np.ndarray) -> ir.Tensor:
    """The tensor to store for a weight whose pruned real values a method returned (requantized if quantized)."""
    grid = record.grid
    values = pruned if grid is None else requantize(grid, tensor.numpy(), pruned, values_kept=False)
    return ir.Tensor(np.asarray(values), dtype=tensor.dtype, name=tensor.name)


def requantize(grid: QuantGrid, stored: np.ndarray, pruned: np.ndarray, *, values_kept: bool) -> np.ndarray:
    """The stored (quantized) tensor for a pruned tensor of real values.

    Pruned entries become the zero point (real 0); kept entries keep their stored
    value when the method kept the values, else are put back on the grid.
    """
    if values_kept:
        return grid.keep(stored, pruned != 0)
    return grid.quantize(pruned)


def in_graph_order(model: ir.Model, records: list[WeightRecord]) -> list[WeightRecord]:
    """Records sorted by the position of their first consumer in the main graph (others last)."""
    position = {node.name: i for i, node in enumerate(model.graph) if node.name}
    last = len(position)
    return sorted(records, key=lambda r: min((position.get(u.node, last) for u in r.uses), default=last))


def _streamable(tensor: ir.TensorProtocol) -> bool:
    """An external tensor whose bytes can be read in rows: byte-sized elements, rank >= 1, little-endian host."""
    return (
        isinstance(tensor, ir.ExternalTensor)
        and tensor.dtype.bitwidth >= 8
        and len(tensor.shape) >= 1
        and sys.byteorder == "little"
    )


def _block_rows(shape: tuple[int, ...], axis: int, dtype: np.dtype) -> int:
    """Rows per block: about ``BLOCK_BYTES``, a multiple of 4 when the groups run along axis 0."""
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
    step = max(1, BLOCK_BYTES // row_bytes)
    if axis == 0:
        step = max(4, step - step % 4)
    return min(step, max(1, shape[0]))


def _row_blocks(shape: tuple[int, ...], axis: int, dtype: np.dtype) -> Iterator[slice]:
    """Consecutive slices along axis 0 of :func:`_block_rows` rows each."""
    step = _block_rows(shape, axis, dtype)
    for start in range(0, shape[0], step):
        yield slice(start, min(start + step, shape[0]))
