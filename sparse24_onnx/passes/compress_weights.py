"""Pass: store every pruned weight in the compressed 2:4 format (spec: :mod:`sparse24_onnx.modelio.compressed`).

Each pruned weight is replaced by its kept values, its 2-bit positions and a
decompression subgraph of standard operators whose output keeps the weight's
name, so every consumer stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from ..core import Sparse24Tensor, decompress, prune_24
from ..modelio.compressed import (
    METADATA_SUFFIX,
    MIN_OPSET,
    NODE_PREFIX,
    VALUES_SUFFIX,
    InitializerEdits,
)
from .base import NeedsWeights, PassResult
from .naming import unique_name
from .prune_weights import InMemory, TensorSink
from .weights import Declined, InitializerSource, Status, WeightRecord, weight_records

__all__ = ["CompressWeights", "CompressedWeight", "compress_record"]


class CompressWeights(NeedsWeights):
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
            try:
                result = compress_record(model, record, taken, store=self.sink.store, contexts=contexts, edits=edits)
            except Declined as declined:
                record.storage_note = declined.reason
                continue
            finally:
                if isinstance(tensor, ir.ExternalTensor):
                    tensor.release()  # unmap the pruned weight (a scratch file): one weight in memory at a time
            record.storage = "compressed"
            record.compressed = result
            changed.append(record)
        edits.finish()
        return PassResult(model, modified=bool(changed), weights=changed)


@dataclass
class CompressedWeight:
    """What was written for one weight (an entry of the metadata JSON)."""

    name: str
    axis: int
    shape: list[int]
    dtype: str
    values: str
    metadata: str
    graph: str
    nodes: list[str]
    constant_node: str | None = None

    def as_dict(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "axis": self.axis,
            "shape": self.shape,
            "dtype": self.dtype,
            "values": self.values,
            "metadata": self.metadata,
            "graph": self.graph,
            "nodes": self.nodes,
        }
        if self.constant_node is not None:
            entry["constant_node"] = self.constant_node
        return entry


def default_opset(owner: ir.Graph | ir.Function, model: ir.Model) -> int:
    """The default-domain opset a node in ``owner`` runs at."""
    for imports in (getattr(owner, "opset_imports", None), model.opset_imports):
        if imports:
            for domain in ("", "ai.onnx"):
                if domain in imports:
                    return int(imports[domain])
    return 0


def _position_tables() -> tuple[np.ndarray, np.ndarray]:
    """For each metadata byte: the lower and the higher kept position of its (low, high) nibble groups."""
    byte = np.arange(256)
    lower = np.stack([byte & 3, (byte >> 4) & 3], axis=1).astype(np.int32)
    higher = np.stack([(byte >> 2) & 3, (byte >> 6) & 3], axis=1).astype(np.int32)
    return lower, higher


_LOWER_POSITION, _HIGHER_POSITION = _position_tables()


@dataclass
class GraphContext:
    """Per graph: where new nodes go first, and the small constants already emitted there."""

    top: ir.Node | None
    constants: dict[tuple[str, tuple[int, ...], bytes], ir.Value]


class _Builder:
    """Collects the nodes for one weight; small constants are shared per graph."""

    def __init__(self, weight: str, taken: set[str], context: GraphContext) -> None:
        self.weight = weight
        self.taken = taken
        self.context = context
        self.nodes: list[ir.Node] = []
        self.shared: list[ir.Node] = []

    def _name(self, what: str, scope: str | None = None) -> str:
        # Per-weight nodes are numbered (their op type says what they do): short names
        # keep the format's overhead small; shared constants are named for what they hold.
        if scope is None:
            what = str(len(self.nodes))
        base = f"{NODE_PREFIX}{self.weight if scope is None else scope}/{what}"
        name, i = base, 1
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name

    def const(self, what: str, array: np.ndarray) -> ir.Value:
        """A small constant, emitted once per graph (at its top) and shared by every weight."""
        key = (array.dtype.str, tuple(array.shape), array.tobytes())
        found = self.context.constants.get(key)
        if found is not None:
            return found
        name = self._name(what, scope="const")
        node = ir.node("Constant", [], {"value": ir.tensor(array, name=name)}, name=name)
        node.outputs[0].name = name
        self.shared.append(node)
        self.context.constants[key] = node.outputs[0]
        return node.outputs[0]

    def tensor_const(self, tensor: ir.TensorProtocol, name: str) -> ir.Value:
        """A Constant node holding one of the weight's own tensors (values or metadata)."""
        node = ir.node("Constant", [], {"value": tensor}, name=name)
        node.outputs[0].name = name
        self.nodes.append(node)
        return node.outputs[0]

    def op(self, op_type: str, inputs: list[ir.Value], what: str, **attributes) -> ir.Value:
        name = self._name(what)
        node = ir.node(op_type, inputs, attributes or None, name=name)
        node.outputs[0].name = name
        self.nodes.append(node)
        return node.outputs[0]


def _decompression(
    builder: _Builder, values: ir.Value, metadata: ir.Value, sparse: Sparse24Tensor, opset: int
) -> ir.Value:
    """Nodes that rebuild the dense tensor from ``values`` and ``metadata``; returns their output."""
    shape = sparse.shape
    axis = sparse.axis
    pre = int(np.prod(shape[:axis], dtype=np.int64))
    post = int(np.prod(shape[axis + 1 :], dtype=np.int64))
    groups = shape[axis] // 4
    count = sparse.num_groups
    i64 = np.int64

    # Byte -> (position, position) of its two groups, read from 256-entry tables:
    # row b of _LOWER_POSITION is (p0 of the low nibble, p0 of the high nibble), so a
    # Gather gives every group's p0 in group order.  (Gather instead of integer
    # Div/Mul/Sub: fewer intermediate tensors for onnxruntime to fold.)
    packed = builder.op("Cast", [metadata], "metadata_int", to=int(ir.DataType.INT32))
    codes_shape = builder.const("codes_shape", np.array([pre, groups, 1, post], i64))
    positions = []
    for what, table in (("p0", _LOWER_POSITION), ("p1", _HIGHER_POSITION)):
        found = builder.op("Gather", [builder.const(f"{what}_table", table), packed], f"{what}_pairs", axis=0)
        flat = builder.op("Reshape", [found, builder.const("flat_shape", np.array([-1], i64))], f"{what}_padded")
        if count % 2:  # drop the unused last nibble
            if opset >= 10:
                starts, ends = (
                    builder.const("starts", np.array([0], i64)),
                    builder.const("ends", np.array([count], i64)),
                )
                flat = builder.op("Slice", [flat, starts, ends], f"{what}_flat")
            else:
                flat = builder.op("Slice", [flat], f"{what}_flat", starts=[0], ends=[count], axes=[0])
        positions.append(builder.op("Reshape", [flat, codes_shape], what))
    p0, p1 = positions
    slots = builder.const("slots", np.arange(4, dtype=np.int32).reshape(1, 1, 4, 1))
    at_p0 = builder.op("Equal", [p0, slots], "at_p0")
    at_p1 = builder.op("Equal", [p1, slots], "at_p1")

    # float16, bfloat16, int8, uint8 and float8 go through float32 (exact both ways): onnxruntime's
    # CPU provider has no float16 Mul, and a node it cannot run on the CPU is not folded.  float8
    # values are cast first (onnxruntime's Reshape and Gather take no float8).
    stored = ir.DataType.from_numpy(sparse.values.dtype)
    compute = stored if stored in (ir.DataType.FLOAT, ir.DataType.DOUBLE) else ir.DataType.FLOAT
    early = stored in (ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT8E5M2)
    if early:
        values = builder.op("Cast", [values], "values_float", to=int(compute))
    # Kept values of each group, split into the lower and the higher one.
    pairs_of_values = builder.op(
        "Reshape", [values, builder.const("values_shape", np.array([pre, groups, 2, post], i64))], "values_grouped"
    )
    lower = builder.op("Gather", [pairs_of_values, builder.const("first", np.array([0], i64))], "lower", axis=2)
    higher = builder.op("Gather", [pairs_of_values, builder.const("second", np.array([1], i64))], "higher", axis=2)
    # dense = lower * [slot == p0] + higher * [slot == p1] + 0: a kept slot gets its value
    # exactly (plus a zero), a pruned slot 0 * x + 0 * y, whose sign the final + (+0) clears.
    if compute != stored and not early:
        lower = builder.op("Cast", [lower], "lower_float", to=int(compute))
        higher = builder.op("Cast", [higher], "higher_float", to=int(compute))
    from_lower = builder.op("Mul", [lower, builder.op("Cast", [at_p0], "is_p0", to=int(compute))], "from_lower")
    from_higher = builder.op("Mul", [higher, builder.op("Cast", [at_p1], "is_p1", to=int(compute))], "from_higher")
    zero = builder.const("zero", np.zeros((), dtype=compute.numpy()))
    dense = builder.op("Sum", [from_lower, from_higher, zero], "dense")  # left to right: (a + b) + 0
    if early:  # reshaped while float, then cast: onnxruntime has no float8 Reshape either
        dense = builder.op("Reshape", [dense, builder.const("shape", np.array(shape, i64))], "reshape_float")
        return builder.op("Cast", [dense], "dense_stored", to=int(stored))
    if compute != stored:
        dense = builder.op("Cast", [dense], "dense_stored", to=int(stored))
    return builder.op("Reshape", [dense, builder.const("shape", np.array(shape, i64))], "reshape")


def _all_names(model: ir.Model) -> set[str]:
    names = set()
    for graph in [*model.graphs(), *model.functions.values()]:
        for node in graph:
            if node.name:
                names.add(node.name)
            names.update(v.name for v in node.outputs if v.name)
        names.update(getattr(graph, "initializers", {}).keys())
        names.update(v.name for v in graph.inputs if v.name)
    return names


def compress_record(
    model: ir.Model,
    record: WeightRecord,
    taken: set[str] | None = None,
    store: Callable[[ir.TensorProtocol], ir.TensorProtocol] | None = None,
    contexts: dict[int, GraphContext] | None = None,
    edits: InitializerEdits | None = None,
) -> CompressedWeight:
    """Replace a pruned weight by values, metadata and its decompression subgraph.

    Args:
        model: The model holding the weight (changed in place).
        record: The weight, already pruned (dense 2:4 along ``record.axis``).
        taken: Names in use (updated); computed when not given.
        store: Where the values and metadata initializers go (a staged side file);
            by default they stay in memory.
        contexts: Per-graph state shared by the weights of one model (where new
            nodes go, the shared constants); keep one dict for a whole model.
        edits: Collects the initializer replacements of many weights, for the caller
            to :meth:`~InitializerEdits.finish`; by default they are finished at once.

    Returns:
        What was written.

    Raises:
        Declined: The weight stays dense, for the reason given (one line).
    """
    source = record.source
    owner = source.value.graph if isinstance(source, InitializerSource) else source.node.graph
    if owner is None:
        raise Declined("cannot tell which graph holds it")
    opset = default_opset(owner, model)
    if opset < MIN_OPSET:
        raise Declined(f"the compressed format needs opset {MIN_OPSET} (integer Constant nodes); the model has {opset}")
    taken = _all_names(model) if taken is None else taken
    contexts = {} if contexts is None else contexts
    context = contexts.setdefault(id(owner), GraphContext(top=next(iter(owner), None), constants={}))
    tensor = source.tensor
    grid = record.grid
    if grid is not None and not grid.symmetric:
        raise Declined(
            "its zero point is not 0 and the format rebuilds pruned entries as 0, so it stays dense "
            "(quantize with symmetric weights, as TensorRT needs anyway)"
        )
    if tensor.dtype in (ir.DataType.INT4, ir.DataType.UINT4):
        raise Declined("4-bit weights stay dense: the decompression subgraph would need 4-bit Gather and Cast kernels")
    dense = tensor.numpy()
    sparse = prune_24(dense, None, record.axis)  # dense is 2:4 already: this keeps its non-zeros
    if not _same_bits(decompress(sparse), dense):
        raise Declined("its dense form is not 2:4 along its axis")
    name = record.name
    builder = _Builder(name, taken, context)
    values_name = unique_name(name + VALUES_SUFFIX, taken)
    metadata_name = unique_name(name + METADATA_SUFFIX, taken)
    values_tensor = ir.Tensor(sparse.values, dtype=tensor.dtype, name=values_name)
    metadata_tensor = ir.Tensor(sparse.metadata, name=metadata_name)

    if isinstance(source, InitializerSource):
        values = ir.Value(name=values_name, const_value=store(values_tensor) if store else values_tensor)
        metadata = ir.Value(name=metadata_name, const_value=store(metadata_tensor) if store else metadata_tensor)
    else:
        values = builder.tensor_const(values_tensor, values_name)
        metadata = builder.tensor_const(metadata_tensor, metadata_name)

    output = _decompression(builder, values, metadata, sparse, opset)
    old = source.value
    old.replace_all_uses_with(output)
    _insert(owner, context.top, builder.shared)
    if isinstance(source, InitializerSource):
        own_edits = edits is None
        edits = InitializerEdits() if own_edits else edits
        edits.replace(owner, old.name, [values, metadata])
        if own_edits:
            edits.finish()
        _insert(owner, context.top, builder.nodes)
    else:
        owner.insert_before(source.node, builder.nodes)
        owner.remove(source.node, safe=True)
        if context.top is source.node:
            context.top = builder.nodes[0]
    output.name = name
    return CompressedWeight(
        name=name,
        axis=int(record.axis),
        shape=[int(d) for d in sparse.shape],
        dtype=tensor.dtype.name,
        values=values_name,
        metadata=metadata_name,
        graph=record.graph,
        nodes=[n.name for n in builder.nodes],
        constant_node=None if isinstance(source, InitializerSource) else (source.node.name or ""),
    )


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-for-bit equality (so -0.0 differs from +0.0) without copying either array."""
    if a.shape != b.shape or a.dtype.itemsize != b.dtype.itemsize:
        return False
    unsigned = f"u{a.dtype.itemsize}"
    return bool(np.array_equal(np.ascontiguousarray(a).view(unsigned), np.ascontiguousarray(b).view(unsigned)))


def _insert(graph: ir.Graph | ir.Function, top: ir.Node | None, nodes: list[ir.Node]) -> None:
    """Insert nodes before ``top`` (the graph's first original node), or append them to an empty graph."""
    if not nodes:
        return
    if top is None:
        graph.extend(nodes)
    else:
        graph.insert_before(top, nodes)
