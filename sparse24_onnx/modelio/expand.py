"""Expanding the compressed format back into the dense-pruned model.

TensorRT's ONNX parser does not fold the decompression subgraph of the
compressed format, so a model meant for TensorRT is expanded first.  Each
compressed weight is decompressed in NumPy and put back where it was, under
its own name, as an initializer (or a ``Constant`` node); its decompression
nodes and its values and metadata tensors are removed.  The expanded weights
are byte-identical to what ``optimize --format dense`` writes, and the
``sparse24`` metadata says ``"format": "dense"`` again.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from ..core import decompress
from ..errors import BadInput
from .compressed import NODE_PREFIX, InitializerEdits, compressed_entries, read_sparse_weight
from .load import stored_tensors
from .provenance import PROVENANCE_KEY, read_provenance

__all__ = ["expand_weights", "expansion_growth"]


def _graphs(model: ir.Model) -> list[ir.Graph | ir.Function]:
    return [*model.graphs(), *model.functions.values()]


def expand_weights(model: ir.Model, store: Callable[[ir.TensorProtocol], ir.TensorProtocol] | None = None) -> list[str]:
    """Replace every compressed weight by its dense form, in place; return their names.

    Weights are expanded one at a time; ``store`` (a staged side file's) takes each
    restored initializer as it is made, so that with external data only one weight
    is in memory at a time.  By default they stay in memory.

    Raises:
        BadInput: The compressed weights or their metadata are inconsistent.
    """
    entries = _entries(model)
    by_name = {node.name: (graph, node) for graph in _graphs(model) for node in graph if node.name}
    tensors = stored_tensors(model)  # read once: the weights not yet expanded keep theirs
    edits = InitializerEdits()
    for name, entry in entries.items():
        try:
            sparse = read_sparse_weight(model, name, entry, tensors=tensors)
            dense = decompress(sparse)
        except ValueError as error:
            raise BadInput(f"cannot read the compressed weights: '{name}': {error}") from None
        del sparse  # its values may map the input's side file: let them go
        tensors.pop(entry["values"], None)
        tensors.pop(entry["metadata"], None)
        found = [by_name[n] for n in entry.get("nodes", []) if n in by_name]
        if not found or len(found) != len(entry.get("nodes", [])):
            raise BadInput(f"compressed weight '{name}': its decompression nodes are not all in the model")
        output = next((v for g, n in found for v in n.outputs if v.name == name), None)
        if output is None:
            raise BadInput(f"compressed weight '{name}': no decompression node produces it")
        graph = found[0][0]
        values_name, metadata_name = entry["values"], entry["metadata"]
        initializers = getattr(graph, "initializers", {})
        if values_name in initializers:
            restored = ir.Value(name=None, const_value=None)
            output.replace_all_uses_with(restored)
            for _, node in reversed(found):
                graph.remove(node, safe=True)
            restored.name = name
            restored.const_value = ir.Tensor(dense, dtype=initializers[values_name].const_value.dtype, name=name)
            if store:
                restored.const_value = store(restored.const_value)
            edits.replace(graph, values_name, [restored])
            del graph.initializers[metadata_name]
        else:
            values_node = by_name.get(values_name, (None, None))[1]
            if values_node is None or values_node.op_type != "Constant":
                raise BadInput(f"compressed weight '{name}': values tensor '{values_name}' not found")
            dtype = values_node.attributes["value"].value.dtype
            node_name = entry.get("constant_node") or name
            constant = ir.node("Constant", [], {"value": ir.Tensor(dense, dtype=dtype, name=name)}, name=node_name)
            graph.insert_before(values_node, constant)
            output.replace_all_uses_with(constant.outputs[0])
            for _, node in reversed(found):
                graph.remove(node, safe=True)
            constant.outputs[0].name = name
        del dense
    edits.finish()
    _drop_unused_shared_constants(model)
    _dense_provenance(model)
    return list(entries)


def _drop_unused_shared_constants(model: ir.Model) -> None:
    """Remove the small constants the decompression subgraphs shared, once nothing reads them."""
    prefix = NODE_PREFIX + "const/"
    for graph in _graphs(model):
        for node in list(graph):
            if node.op_type == "Constant" and (node.name or "").startswith(prefix) and not node.outputs[0].uses():
                graph.remove(node, safe=True)


def _dense_provenance(model: ir.Model) -> None:
    """Rewrite the sparse24 metadata as ``optimize --format dense`` writes it."""
    entry = read_provenance(model)
    if not entry:
        return
    entry["format"] = "dense"
    entry.pop("format_version", None)
    # A dense-format entry is only the axis (also for weights the compressed route kept dense).
    entry["tensors"] = {
        name: ({"axis": t["axis"]} if isinstance(t, dict) and "axis" in t else t)
        for name, t in entry.get("tensors", {}).items()
    }
    model.metadata_props[PROVENANCE_KEY] = json.dumps(entry, sort_keys=True)


def _entries(model: ir.Model) -> dict[str, dict]:
    try:
        return compressed_entries(model)
    except ValueError as error:
        raise BadInput(f"cannot read the compressed weights: {error}") from None


def expansion_growth(model: ir.Model) -> int:
    """Bytes the model's tensors gain when every compressed weight is expanded."""
    growth = 0
    tensors = stored_tensors(model)
    for name, entry in _entries(model).items():
        parts = [tensors.get(entry["values"]), tensors.get(entry["metadata"])]
        if None in parts:
            raise BadInput(f"cannot read the compressed weights: tensors of '{name}' are missing")
        stored = sum(t.nbytes for t in parts)
        dense = int(np.prod(entry["shape"], dtype=np.int64)) * int(ir.DataType[entry["dtype"]].itemsize)
        growth += dense - stored
    return growth
