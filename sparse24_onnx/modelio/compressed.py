"""The compressed 2:4 storage format inside an ONNX file, version 1: its spec, and reading it back.

Written by :class:`~sparse24_onnx.passes.CompressWeights`; expanded back by
:mod:`sparse24_onnx.modelio.expand`.

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

import numpy as np
import onnx_ir as ir

from ..core import Sparse24Tensor
from .load import stored_tensors
from .provenance import PROVENANCE_KEY, read_provenance

__all__ = [
    "FORMAT_VERSION",
    "METADATA_SUFFIX",
    "MIN_OPSET",
    "NODE_PREFIX",
    "VALUES_SUFFIX",
    "InitializerEdits",
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
