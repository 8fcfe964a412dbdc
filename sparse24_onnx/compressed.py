"""The compressed 2:4 storage format inside an ONNX file, version 1.

A pruned weight ``W`` (dense shape ``S``, dtype ``T``, groups of 4 along ``axis``,
``S[axis] = 4G``) is stored as two tensors and rebuilt by a small subgraph of
standard ONNX operators whose output is named ``W``, so every consumer of ``W``
stays as it was:

* ``<W>.sparse24_values``: dtype ``T``, shape ``S`` with ``S[axis] = 2G``: the kept
  values, ``[..., 2g, ...]`` the one at the lower position of group ``g``,
  ``[..., 2g+1, ...]`` the one at the higher position.
* ``<W>.sparse24_metadata``: uint8, ``ceil(n/2)`` bytes for ``n = prod(S) / 4`` groups:
  group ``i`` (C order over ``S`` with ``S[axis]`` replaced by ``G``) has the code
  ``p0 | p1 << 2`` (``0 <= p0 < p1 <= 3``, its kept positions) in byte ``i // 2``, low
  nibble for even ``i``, high nibble for odd ``i``; an unused last nibble is 0.

This is exactly :class:`~sparse24_onnx.core.Sparse24Tensor`'s layout.  The two
tensors are initializers where ``W`` was an initializer (of the main graph or a
subgraph) and ``Constant`` nodes where ``W`` was a ``Constant`` node (Paddle
exports, model-local functions).

The decompression subgraph uses only operators that exist at opset 9 (its integer
``Constant`` nodes need ``Constant-9``) and keeps the model's opsets: no bit
operators, the kept positions of each byte's two groups are looked up (``Gather``)
in two constant 256 x 2 tables, compared with ``Equal`` against ``[0, 1, 2, 3]``,
and the dense tensor is ``lower * [slot == p0] + higher * [slot == p1] + 0``, exact
in IEEE arithmetic: a kept slot gets its value (plus zero), a pruned slot +0 (the
final addition of +0 clears the sign of ``0 * negative``).  Pruned tensors hold no
-0.0 (the pruning kernels write kept -0.0 as +0.0), so the result equals the
dense-pruned tensor bit for bit.  ``Where`` would select too, but onnxruntime's
broadcasting ``Where`` is ~4x slower than this multiply-add, and onnxruntime folds
the subgraph into a constant each time a session is created.  float16 and
bfloat16 values are cast to float32 for the arithmetic and the result cast back
(both exact), because onnxruntime's CPU provider has no float16 ``Mul`` and does
not fold what it cannot run.

The model's ``metadata_props["sparse24"]`` JSON says ``"format": "compressed"``,
``"format_version": 1`` and, per weight under ``"tensors"``: ``axis``, ``shape``,
``dtype``, ``values``, ``metadata`` (the two tensor names), ``graph``, ``nodes``
(the decompression nodes' names) and, for a weight that was a ``Constant`` node,
``constant_node`` (that node's name, restored by ``expand``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from .core import Sparse24Tensor, decompress, prune_24
from .metadata import PROVENANCE_KEY, read_provenance
from .model_io import stored_tensors
from .weights import InitializerSource, WeightRecord

__all__ = [
    "FORMAT_VERSION",
    "MIN_OPSET",
    "CompressedWeight",
    "InitializerEdits",
    "compress_record",
    "compressed_entries",
    "read_sparse_weight",
    "read_sparse_weights",
]

FORMAT_VERSION = 1
#: The subgraph's integer ``Constant`` nodes (shapes, position tables) need opset 9 (``Constant-9``).
MIN_OPSET = 9
VALUES_SUFFIX = ".sparse24_values"
METADATA_SUFFIX = ".sparse24_metadata"
NODE_PREFIX = "s24/"


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

    # Kept values of each group, split into the lower and the higher one.
    pairs_of_values = builder.op(
        "Reshape", [values, builder.const("values_shape", np.array([pre, groups, 2, post], i64))], "values_grouped"
    )
    lower = builder.op("Gather", [pairs_of_values, builder.const("first", np.array([0], i64))], "lower", axis=2)
    higher = builder.op("Gather", [pairs_of_values, builder.const("second", np.array([1], i64))], "higher", axis=2)
    # dense = lower * [slot == p0] + higher * [slot == p1] + 0: a kept slot gets its value
    # exactly (plus a zero), a pruned slot 0 * x + 0 * y, whose sign the final + (+0) clears.
    # float16 and bfloat16 go through float32 (exact both ways): onnxruntime's CPU provider
    # has no float16 Mul, and a node it cannot run on the CPU is not folded.
    stored = ir.DataType.from_numpy(sparse.values.dtype)
    compute = stored if stored in (ir.DataType.FLOAT, ir.DataType.DOUBLE) else ir.DataType.FLOAT
    if compute != stored:
        lower = builder.op("Cast", [lower], "lower_float", to=int(compute))
        higher = builder.op("Cast", [higher], "higher_float", to=int(compute))
    from_lower = builder.op("Mul", [lower, builder.op("Cast", [at_p0], "is_p0", to=int(compute))], "from_lower")
    from_higher = builder.op("Mul", [higher, builder.op("Cast", [at_p1], "is_p1", to=int(compute))], "from_higher")
    zero = builder.const("zero", np.zeros((), dtype=compute.numpy()))
    dense = builder.op("Sum", [from_lower, from_higher, zero], "dense")  # left to right: (a + b) + 0
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


class InitializerEdits:
    """Replaces initializers one by one, then puts the replacements where the originals were.

    Each :meth:`replace` is a constant-time swap (the replacements go last);
    :meth:`finish` restores the order with one rebuild per graph touched.
    (Rebuilding at every replacement made compressing or expanding n weights
    take time quadratic in n.)
    """

    def __init__(self) -> None:
        self._graphs: dict[int, tuple[ir.Graph, list[str], dict[str, list[str]]]] = {}

    def replace(self, graph: ir.Graph, name: str, replacements: list[ir.Value]) -> None:
        """Unregister initializer ``name`` and register ``replacements`` in its stead."""
        _, _, replaced = self._graphs.setdefault(id(graph), (graph, list(graph.initializers), {}))
        del graph.initializers[name]
        for value in replacements:
            graph.register_initializer(value)
        replaced[name] = [value.name for value in replacements]

    def finish(self) -> None:
        """Restore the initializers' order: each replacement where its original was."""
        for graph, before, replaced in self._graphs.values():
            current = dict(graph.initializers)
            order = [new for old in before for new in replaced.get(old, [old])]
            placed = set(order)
            order += [name for name in current if name not in placed]
            graph.initializers.clear()
            for name in order:
                if name in current:
                    graph.register_initializer(current[name])
        self._graphs.clear()


def compress_record(
    model: ir.Model,
    record: WeightRecord,
    taken: set[str] | None = None,
    store: Callable[[ir.TensorProtocol], ir.TensorProtocol] | None = None,
    contexts: dict[int, GraphContext] | None = None,
    edits: InitializerEdits | None = None,
) -> CompressedWeight | str:
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
        What was written, or the reason the weight was left dense (one line).
    """
    source = record.source
    owner = source.value.graph if isinstance(source, InitializerSource) else source.node.graph
    if owner is None:
        return "cannot tell which graph holds it"
    opset = default_opset(owner, model)
    if opset < MIN_OPSET:
        return f"the compressed format needs opset {MIN_OPSET} (integer Constant nodes); the model has {opset}"
    taken = _all_names(model) if taken is None else taken
    contexts = {} if contexts is None else contexts
    context = contexts.setdefault(id(owner), GraphContext(top=next(iter(owner), None), constants={}))
    tensor = source.tensor
    dense = tensor.numpy()
    sparse = prune_24(dense, None, record.axis)  # dense is 2:4 already: this keeps its non-zeros
    if not _same_bits(decompress(sparse), dense):
        return "its dense form is not 2:4 along its axis"
    name = record.name
    builder = _Builder(name, taken, context)
    values_name = _unique(name + VALUES_SUFFIX, taken)
    metadata_name = _unique(name + METADATA_SUFFIX, taken)
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


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


#: Keys every per-weight entry of the format's metadata must have.
_ENTRY_KEYS = ("axis", "shape", "dtype", "values", "metadata", "nodes")


def compressed_entries(model: ir.Model) -> dict[str, dict]:
    """The per-weight entries of a compressed model's ``sparse24`` metadata (empty if not compressed).

    Raises:
        ValueError: The model has decompression nodes but its metadata cannot be read,
            or the metadata is of another format version or lacks a weight's keys.
    """
    text = model.metadata_props.get(PROVENANCE_KEY)
    entry = read_provenance(model)
    if text and not entry and _has_decompression_nodes(model):
        raise ValueError(f"metadata_props['{PROVENANCE_KEY}'] is not a JSON object, so the compressed weights are lost")
    if entry.get("format") != "compressed":
        return {}
    version = entry.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"compressed format version {version!r}; this version of sparse24-onnx reads {FORMAT_VERSION}")
    tensors = entry.get("tensors")
    if not isinstance(tensors, dict):
        raise ValueError(f"metadata_props['{PROVENANCE_KEY}'] has no 'tensors' object")
    # Pruned weights the format could not hold (a model below opset 9) say "storage": "dense".
    tensors = {k: v for k, v in tensors.items() if not (isinstance(v, dict) and v.get("storage") == "dense")}
    for name, weight in tensors.items():
        missing = [key for key in _ENTRY_KEYS if not isinstance(weight, dict) or key not in weight]
        if missing:
            raise ValueError(f"compressed weight '{name}': its metadata lacks {', '.join(missing)}")
        if weight["dtype"] not in ir.DataType.__members__:
            raise ValueError(f"compressed weight '{name}': unknown dtype {weight['dtype']!r}")
        shape, axis = weight["shape"], weight["axis"]
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape) and shape):
            raise ValueError(f"compressed weight '{name}': shape {shape!r} is not a list of sizes")
        if not (isinstance(axis, int) and -len(shape) <= axis < len(shape)):
            raise ValueError(f"compressed weight '{name}': axis {axis!r} does not fit shape {shape}")
    return tensors


def _has_decompression_nodes(model: ir.Model) -> bool:
    return any(
        (node.name or "").startswith(NODE_PREFIX) for g in [*model.graphs(), *model.functions.values()] for node in g
    )


def read_sparse_weights(model: ir.Model) -> dict[str, Sparse24Tensor]:
    """Every compressed weight of a model as a :class:`Sparse24Tensor`, without running the graph.

    Tensors in external data are memory-mapped, not read; for a model larger than
    memory, take one weight at a time with :func:`read_sparse_weight`.

    Raises:
        ValueError: The metadata names a tensor that is missing or has the wrong shape.
    """
    tensors = stored_tensors(model)
    return {
        name: read_sparse_weight(model, name, entry, tensors=tensors)
        for name, entry in compressed_entries(model).items()
    }


def read_sparse_weight(
    model: ir.Model, name: str, entry: dict | None = None, *, tensors: dict[str, ir.TensorProtocol] | None = None
) -> Sparse24Tensor:
    """One compressed weight as a :class:`Sparse24Tensor`.

    Args:
        entry: Its metadata entry, if at hand.
        tensors: :func:`stored_tensors` of the model, when reading many weights.

    Raises:
        ValueError: The weight is not compressed, or its tensors are missing or have the wrong shape.
    """
    if entry is None:
        entry = compressed_entries(model).get(name)
        if entry is None:
            raise ValueError(f"'{name}' is not a compressed weight of this model")
    tensors = stored_tensors(model) if tensors is None else tensors
    values, metadata = tensors.get(entry["values"]), tensors.get(entry["metadata"])
    if values is None or metadata is None:
        raise ValueError(f"compressed weight '{name}': tensor '{entry['values']}' or '{entry['metadata']}' missing")
    return Sparse24Tensor(
        values=values.numpy(),
        metadata=np.asarray(metadata.numpy(), dtype=np.uint8).reshape(-1),
        shape=tuple(entry["shape"]),
        axis=int(entry["axis"]),
    )
