"""Write a model with every tensor embedded, straight from the tensors' buffers.

``onnx.save`` needs the whole model as one protobuf message in memory and then
as one serialised string: three copies of every weight (the arrays, the
message, the string) before the first byte reaches the disk.  Here the model
is serialised without its main-graph tensor data, and the file is written as
that message with the ``initializer`` entries spliced into the graph field,
each tensor's bytes written from its own buffer.  The result is an ordinary
ModelProto (one ``graph`` field; inside it, the initializers after the other
graph fields, in their original order), read back by any protobuf parser.

Wire format used (protobuf): a length-delimited field is ``tag, varint length,
bytes`` with ``tag = field_number << 3 | 2``; ``ModelProto.graph`` is field 7,
``GraphProto.initializer`` field 5, ``TensorProto.raw_data`` field 9.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

__all__ = ["write_embedded"]

_LENGTH_DELIMITED = 2
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field: int) -> bytes:
    return _varint(field << 3 | _LENGTH_DELIMITED)


def _buffer(tensor: ir.TensorProtocol) -> memoryview | bytes:
    """The tensor's bytes in ONNX raw_data layout, without a copy where possible."""
    if tensor.dtype.bitwidth >= 8 and isinstance(tensor, (ir.Tensor, ir.ExternalTensor)):
        array = tensor.numpy()
        if array.dtype.byteorder not in (">",) and array.dtype.itemsize * 8 == tensor.dtype.bitwidth:
            return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return tensor.tobytes()


def _spliced(tensor: ir.TensorProtocol) -> bool:
    return tensor is not None and tensor.dtype != ir.DataType.STRING


def _placeholder(tensor: ir.TensorProtocol, location: str = "sparse24-placeholder") -> ir.ExternalTensor:
    """Stands in for a tensor while the rest of the model is serialised (no data copied)."""
    return ir.ExternalTensor(
        location,
        0,
        tensor.nbytes,
        tensor.dtype,
        shape=tensor.shape,
        name=tensor.name,
        doc_string=tensor.doc_string,
        metadata_props=dict(tensor.metadata_props) or None,
    )


def _embedded_subgraph_tensors(model: ir.Model) -> Iterator[tuple[ir.Value, ir.TensorProtocol]]:
    """Subgraph initializers held in external data: read into memory so that they are embedded."""
    for graph in model.graphs():
        if graph is model.graph:
            continue
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                yield value, value.const_value


#: Location written for tensors whose data the caller hands to onnxruntime itself.
PROVIDED_LOCATION = "sparse24-provided-by-caller"


def write_embedded(model: ir.Model, path: str | os.PathLike, *, provided: frozenset[str] = frozenset()) -> int:
    """Write ``model`` to ``path`` with every tensor embedded; return the file size in bytes.

    Args:
        provided: Names of main-graph initializers *not* to write: they are left as
            external references to :data:`PROVIDED_LOCATION`, for a caller that gives
            onnxruntime their data directly (``SessionOptions.add_external_initializers``),
            so that a model of any size needs no copy of its weights on disk.

    The model is unchanged afterwards.
    """
    spliced = [
        (v, v.const_value)
        for v in model.graph.initializers.values()
        if _spliced(v.const_value) and v.name not in provided
    ]
    referenced = [(v, v.const_value) for v in model.graph.initializers.values() if v.name in provided]
    swapped = list(_embedded_subgraph_tensors(model))
    try:
        for value, tensor in spliced:
            value.const_value = _placeholder(tensor)
        for value, tensor in referenced:
            value.const_value = _placeholder(tensor, PROVIDED_LOCATION)
        for value, tensor in swapped:
            value.const_value = ir.Tensor(np.array(tensor.numpy()), dtype=tensor.dtype, name=tensor.name)
        proto = ir.serde.serialize_model(model)
    finally:
        for value, tensor in spliced + referenced + swapped:
            value.const_value = tensor
    heads = []
    kept = []  # references to provided tensors, written as they are
    for entry in proto.graph.initializer:
        if entry.name in provided:
            kept.append(entry.SerializeToString())
            continue
        entry.ClearField("external_data")
        entry.ClearField("data_location")
        heads.append(entry.SerializeToString())
    del proto.graph.initializer[:]
    graph = proto.graph.SerializeToString()
    proto.ClearField("graph")
    outer = proto.SerializeToString()

    entries = []
    graph_length = len(graph)
    for data in kept:
        lead = _tag(_GRAPH_INITIALIZER) + _varint(len(data))
        entries.append((lead, data))
        graph_length += len(lead) + len(data)
    for head, (_, tensor) in zip(heads, spliced, strict=True):
        data = _buffer(tensor)
        size = len(data) if isinstance(data, bytes) else data.nbytes
        prefix = head + _tag(_TENSOR_RAW_DATA) + _varint(size)
        entry_length = len(prefix) + size
        lead = _tag(_GRAPH_INITIALIZER) + _varint(entry_length)
        entries.append((lead + prefix, data))
        graph_length += len(lead) + entry_length
    with open(path, "wb") as file:
        file.write(outer)
        file.write(_tag(_MODEL_GRAPH) + _varint(graph_length))
        file.write(graph)
        for prefix, data in entries:
            file.write(prefix)
            file.write(data)
        return file.tell()
