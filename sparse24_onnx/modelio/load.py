"""Reading a model safely: one clear error for every way a file can be unusable.

Models are held in onnx-ir (``onnx_ir``), which memory-maps tensors kept in
external data files instead of reading them, and serialises a model back
without losing opset imports, functions, metadata, value_info or doc strings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
import onnx_ir.passes.common
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from ..errors import BadInput

__all__ = [
    "PROTOBUF_LIMIT_BYTES",
    "external_files",
    "load_model",
    "needs_external_data",
    "stored_tensors",
]

#: Serialised protobuf messages cannot exceed 2 GiB; stay clear of it.
PROTOBUF_LIMIT_BYTES = 2**31 - 2**26


def load_model(
    path: str | os.PathLike,
    *,
    check: bool = True,
    when_rejected: Callable[[str], None] | None = None,
    notes: list[str] | None = None,
) -> ir.Model:
    """Load an ONNX model into onnx-ir, or raise :class:`BadInput` saying why not.

    Tensors in external data stay on disk (memory-mapped on first use), resolved
    relative to the model's folder.  With ``check`` the model also goes through
    ``onnx.checker`` (given the path when it must see external data or the file
    is over 2 GiB).  Graphs whose nodes are not in topological order (which
    onnxruntime accepts) are sorted, with a line in ``notes``.

    Args:
        when_rejected: Called with the checker's complaint when it rejects the
            model; it raises to refuse the model or returns to load it anyway
            (the tool lets onnxruntime decide).  Without it a rejection is bad input.
        notes: Where to append one-line notes about repairs made while loading.
    """
    path = Path(path)
    if not path.exists():
        raise BadInput(f"{path}: no such file")
    if path.is_dir():
        raise BadInput(f"{path}: is a directory, expected an .onnx file")
    try:
        size = path.stat().st_size
    except OSError as error:
        raise BadInput(f"{path}: cannot read ({error.strerror})") from None
    if size == 0:
        raise BadInput(f"{path}: empty file, not an ONNX model")
    try:
        data = path.read_bytes()
        proto = onnx.load_model_from_string(data)
    except (DecodeError, RuntimeError, ValueError) as error:
        raise BadInput(f"{path}: not an ONNX model (cannot parse it: {_first_line(error)})") from None
    except OSError as error:
        raise BadInput(f"{path}: cannot read ({error.strerror or error})") from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise BadInput(f"{path}: not an ONNX model (no graph or no IR version; truncated or another format?)")
    sparse = [t.values.name for graph in _proto_graphs(proto) for t in graph.sparse_initializer]
    if sparse:
        raise BadInput(
            f"{path}: holds sparse_initializer tensors ({', '.join(sparse[:3])}{', ...' if len(sparse) > 3 else ''}), "
            "which this tool cannot carry through; store them as ordinary initializers first"
        )
    if len(proto.training_info):
        raise BadInput(
            f"{path}: holds training_info (training graphs), which this tool would drop from OUT; "
            "remove it first (or prune the inference model)"
        )
    where = _first_invalid_text(proto)
    if where:
        raise BadInput(f"{path}: not a valid ONNX model: {where} holds text that is not UTF-8 (damaged file?)")
    _refuse_missing_external_files(path, proto)
    if check:
        try:
            # The bytes already read go to the C++ checker as they are (no second read,
            # no serialisation); with external data it needs the path to find the side files.
            onnx.checker.check_model(str(path) if _uses_external_data(proto) else data)
        except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as error:
            complaint = _first_line(error)
        except UnicodeDecodeError:  # the checker's own message quotes bytes of the file that are not text
            complaint = "(its message is not readable text)"
        else:
            complaint = None
        if complaint is not None:
            if when_rejected is None:
                raise BadInput(f"{path}: the ONNX checker rejects the model: {complaint}")
            when_rejected(complaint)
    del data
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:
        cause = error
        while cause.__cause__ is not None:  # onnx-ir wraps the reason in a SerdeError per level
            cause = cause.__cause__
        raise BadInput(f"{path}: cannot read the model's graph: {_first_line(cause)}") from None
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    _check_external_extents(model)
    _forget_implied_initializer_types(model, proto)
    unsorted = [label for label, graph in _labelled_graphs(model) if not _is_sorted(graph)]
    if unsorted:
        ir.passes.common.TopologicalSortPass()(model)
        if notes is not None:
            notes.append(
                f"nodes of {', '.join(unsorted[:3])}{' ...' if len(unsorted) > 3 else ''} were not in topological "
                "order (onnxruntime accepts that, the ONNX checker does not); they were sorted"
            )
    return model


def _labelled_graphs(model: ir.Model) -> Iterator[tuple[str, ir.Graph | ir.Function]]:
    for graph in model.graphs():
        yield f"graph {graph.name or '(unnamed)'!r}", graph
    for function in model.functions.values():
        yield f"function {function.name!r}", function


def _is_sorted(graph: ir.Graph | ir.Function) -> bool:
    """Whether every node comes after the producers of its inputs (within this graph)."""
    position = {id(node): i for i, node in enumerate(graph)}
    for i, node in enumerate(graph):
        for value in node.inputs:
            producer = value.producer() if value is not None else None
            if producer is not None and position.get(id(producer), -1) > i:
                return False
    return True


def _check_external_extents(model: ir.Model) -> None:
    """Refuse external data that does not hold its tensors' bytes (the checker only sees that the file exists)."""
    sizes: dict[str, int] = {}
    for tensor in stored_tensors(model).values():
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        where = tensor.path
        if where not in sizes:
            try:
                sizes[where] = os.path.getsize(where)
            except OSError as error:
                raise BadInput(f"{where}: cannot read the external data of '{tensor.name}': {error.strerror}") from None
        length = tensor.length if tensor.length is not None else tensor.nbytes
        if length != tensor.nbytes:
            raise BadInput(
                f"{where}: tensor '{tensor.name}' declares {length} bytes of external data, "
                f"its dtype and shape need {tensor.nbytes}"
            )
        end = (tensor.offset or 0) + length
        if end > sizes[where]:
            raise BadInput(
                f"{where}: external data ends early: tensor '{tensor.name}' needs bytes up to {end}, "
                f"the file has {sizes[where]}"
            )


def stored_tensors(model: ir.Model) -> dict[str, ir.TensorProtocol]:
    """Every tensor the model holds by name: initializers and ``Constant`` node values, all graphs.

    One pass over the model: look tensors up here rather than scanning the model for
    each (which made reading many compressed weights quadratic).
    """
    found: dict[str, ir.TensorProtocol] = {}
    for graph in [*model.graphs(), *model.functions.values()]:
        for node in graph:
            if node.op_type == "Constant" and node.outputs and node.outputs[0].name:
                attribute = node.attributes.get("value")
                if attribute is not None:
                    found.setdefault(node.outputs[0].name, attribute.value)
        for value in getattr(graph, "initializers", {}).values():
            if value.const_value is not None and value.name:
                found[value.name] = value.const_value  # an initializer wins over a Constant of its name
    return found


def _first_invalid_text(message, where: str = "") -> str | None:
    """The first string field (as ``graph.node.doc_string``) whose bytes are not UTF-8, or None.

    ONNX strings are UTF-8; protobuf hands back the bytes of one that is not, which
    cannot be written again.  Only string and message fields are read (never a
    tensor's data, which reading through protobuf would copy).
    """
    strings, messages = _text_fields(message.DESCRIPTOR)
    for name, repeated in strings:
        value = getattr(message, name)
        if (bytes in map(type, value)) if repeated else type(value) is bytes:
            return where + name
    for name, repeated in messages:
        if repeated:
            children = getattr(message, name)
        elif message.HasField(name):
            children = (getattr(message, name),)
        else:
            continue
        for child in children:
            found = _first_invalid_text(child, f"{where}{name}.")
            if found:
                return found
    return None


_TEXT_FIELDS: dict = {}


def _text_fields(descriptor) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """(string fields, message fields) of a message type, each as (name, repeated); cached per type."""
    found = _TEXT_FIELDS.get(descriptor)
    if found is None:
        strings = [(f.name, _repeated(f)) for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING]
        messages = [(f.name, _repeated(f)) for f in descriptor.fields if f.type == FieldDescriptor.TYPE_MESSAGE]
        found = _TEXT_FIELDS[descriptor] = (strings, messages)
    return found


def _repeated(field) -> bool:
    # protobuf 7 has only ``is_repeated``; protobuf before 5.29 only ``label``.
    repeated = getattr(field, "is_repeated", None)
    return field.label == FieldDescriptor.LABEL_REPEATED if repeated is None else bool(repeated)


def _proto_graphs(proto: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph and every subgraph, at any depth, of a ModelProto (functions' too)."""
    pending = [proto.graph]
    pending.extend(a.g for f in proto.functions for n in f.node for a in n.attribute if a.HasField("g"))
    pending.extend(g for f in proto.functions for n in f.node for a in n.attribute for g in a.graphs)
    while pending:
        graph = pending.pop()
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    pending.append(attribute.g)
                pending.extend(attribute.graphs)


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(
        tensor.data_location == onnx.TensorProto.EXTERNAL
        for graph in _proto_graphs(proto)
        for tensor in graph.initializer
    )


def _forget_implied_initializer_types(model: ir.Model, proto: onnx.ModelProto) -> None:
    """Keep value_info as it was: drop the type onnx-ir gives initializers not declared there.

    onnx-ir types every initializer value and then writes a value_info entry for
    each; the output should list exactly the value_info entries the input had.
    """
    declared = {info.name for graph in _proto_graphs(proto) for info in graph.value_info}
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.name not in declared and not value.is_graph_input():
                value.type = None
                value.shape = None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value


def needs_external_data(model: ir.Model, growth: int = 0) -> bool:
    """Whether the model's tensors (subgraphs included) are too large to serialise in one protobuf.

    Above :data:`PROTOBUF_LIMIT_BYTES` in all, the weights must go to a side file.
    ``growth``: bytes the tensors will gain before the model is saved (decided now,
    so that the new tensors can go to the side file as they are made).
    """
    return sum(tensor.nbytes for tensor in _tensors(model)) + growth > PROTOBUF_LIMIT_BYTES


def _refuse_missing_external_files(path: Path, proto: onnx.ModelProto) -> None:
    """One short line naming a side file the model refers to that is not there (before the checker's long one)."""
    for graph in _proto_graphs(proto):
        tensors = list(graph.initializer) + [
            a.t for node in graph.node for a in node.attribute if a.name == "value" and a.HasField("t")
        ]
        for tensor in tensors:
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in tensor.external_data if e.key == "location"), None)
            if location is None:
                continue
            side = path.parent / location
            if not side.is_file():
                raise BadInput(
                    f"{path}: its weights are stored in {location!r}, which is not there (looked for {side}); "
                    "copy the .data file next to the model"
                )


def external_files(model: ir.Model) -> set[Path]:
    """Resolved paths of the external data files the model's tensors live in."""
    files = set()
    for tensor in _tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            files.add(Path(tensor.path).resolve())
    return files
