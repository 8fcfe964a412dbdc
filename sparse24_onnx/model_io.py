"""Reading a model safely and writing one atomically.

Models are held in onnx-ir (``onnx_ir``), which memory-maps tensors kept in
external data files instead of reading them, and serialises a model back
without losing opset imports, functions, metadata, value_info or doc strings.

An output is staged in a temporary folder beside its destination, may be
inspected there (validation loads it into onnxruntime), and is then moved into
place with ``os.replace``, side file first and model last, or discarded: a
failed run never leaves a partial OUT behind.  With external data, tensors are
written to the staged side file as they are produced, so peak memory follows
the largest tensor, not the model.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError

from .errors import BadInput
from .model_writer import write_embedded

__all__ = [
    "PROTOBUF_LIMIT_BYTES",
    "StagedOutput",
    "TensorWriter",
    "check_output_path",
    "external_files",
    "load_model",
    "needs_external_data",
    "stored_tensors",
]

#: Serialised protobuf messages cannot exceed 2 GiB; stay clear of it.
PROTOBUF_LIMIT_BYTES = 2**31 - 2**26


def load_model(path: str | os.PathLike, *, check: bool = True) -> ir.Model:
    """Load an ONNX model into onnx-ir, or raise :class:`BadInput` saying why not.

    Tensors in external data stay on disk (memory-mapped on first use), resolved
    relative to the model's folder.  With ``check`` the model also goes through
    ``onnx.checker`` (given the path when it must see external data or the file
    is over 2 GiB).
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
    if check:
        try:
            # The bytes already read go to the C++ checker as they are (no second read,
            # no serialisation); with external data it needs the path to find the side files.
            onnx.checker.check_model(str(path) if _uses_external_data(proto) else data)
        except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as error:
            raise BadInput(f"{path}: the ONNX checker rejects the model: {_first_line(error)}") from None
        except UnicodeDecodeError:  # the checker's own message quotes bytes of the file that are not text
            raise BadInput(f"{path}: the ONNX checker rejects the model (its message is not readable text)") from None
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
    return model


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


def external_files(model: ir.Model) -> set[Path]:
    """Resolved paths of the external data files the model's tensors live in."""
    files = set()
    for tensor in _tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            files.add(Path(tensor.path).resolve())
    return files


def _refuse_special(path: Path, what: str) -> None:
    """OUT's files are replaced whole (rename): never do that to a device, pipe or socket."""
    if path.exists() and not path.is_file():
        raise BadInput(
            f"{path}: exists and is not a regular file (a device, pipe or socket); {what} would replace it, "
            "so give a file path"
        )


def check_output_path(out: str | os.PathLike, inp: str | os.PathLike) -> Path:
    """Refuse an output that would overwrite the input or cannot be written."""
    out = Path(out)
    if out.exists() and out.resolve() == Path(inp).resolve():
        raise BadInput(f"{out}: OUT is the input model; write to another file (the input is never modified)")
    if out.is_dir():
        raise BadInput(f"{out}: is a directory; give OUT as a file path such as {out / 'model.onnx'}")
    _refuse_special(out, "OUT")
    folder = out.parent if str(out.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{folder}: is not a folder, so OUT cannot be written inside it")
    if not folder.is_dir():
        raise BadInput(f"{folder}: the output folder does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInput(f"{folder}: the output folder is not writable")
    return out


class StagedOutput:
    """An output model being written into a temporary folder beside its destination.

    With ``external_data``, tensors go to the side file ``<OUT name>.data`` as
    they are produced (:meth:`store`), so a model larger than memory passes
    through one tensor at a time; :meth:`save` then moves every other large
    tensor into the same file, streamed from wherever it lives, and writes the
    model.  Without it, :meth:`save` embeds every tensor.

    ``path`` can be opened (by onnxruntime, say) once saved, until
    :meth:`commit` moves the files next to ``destination`` (side file first,
    model last) or :meth:`discard` deletes them.  Used as a context manager it
    discards whatever was not committed.
    """

    #: Tensors of at most this many bytes stay embedded even with external data.
    EMBED_BYTES = 1024

    def __init__(self, destination: Path, *, external_data: bool, input_files: set[Path] = frozenset()) -> None:
        self.destination = destination
        if destination.resolve() in input_files:
            raise BadInput(f"{destination}: OUT is the input's external data file; write to another file")
        self.data_name = destination.name + ".data" if external_data else None
        if self.data_name:
            _refuse_special(destination.parent / self.data_name, "OUT's side file")
        if self.data_name and (destination.parent / self.data_name).resolve() in input_files:
            raise BadInput(
                f"{destination.parent / self.data_name}: OUT's side file would overwrite the input's external data; "
                "choose another OUT name"
            )
        try:
            self.folder = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent))
        except OSError as error:
            raise BadInput(f"{destination.parent}: cannot write in the output folder ({error.strerror})") from None
        self.path = self.folder / destination.name
        # Unbuffered: blocks go to the kernel in slices of WRITE_BYTES (see _write_array).
        self._data = open(self.folder / self.data_name, "wb", buffering=0) if self.data_name else None  # noqa: SIM115
        self._saved = False

    @property
    def external_data(self) -> bool:
        return self.data_name is not None

    def store(self, tensor: ir.TensorProtocol) -> ir.TensorProtocol:
        """Where a new tensor should live: in the side file (returned as an ExternalTensor) or in memory."""
        if self._data is None or tensor.nbytes <= self.EMBED_BYTES:
            return tensor
        offset = self._data.tell()
        try:
            _reserve(self._data, offset, tensor.nbytes)
            if isinstance(tensor, ir.ExternalTensor):
                tensor.tofile(self._data)  # copy_file_range: the kernel copies, no user-space pass
            else:
                _write_array(self._data, tensor.numpy())
        except OSError as error:
            raise BadInput(f"{self.destination}: cannot write the side file ({error.strerror or error})") from None
        return ir.ExternalTensor(
            self.data_name,
            offset,
            self._data.tell() - offset,
            tensor.dtype,
            shape=tensor.shape,
            name=tensor.name,
            doc_string=tensor.doc_string,
            metadata_props=dict(tensor.metadata_props) or None,
            base_dir=self.folder,
        )

    def begin(self, like: ir.TensorProtocol) -> TensorWriter | None:
        """A writer that streams a tensor shaped like ``like`` into the side file in blocks.

        None without external data or for small tensors (use :meth:`store`).
        """
        if self._data is None or like.nbytes <= self.EMBED_BYTES:
            return None
        return TensorWriter(self, like)

    def save(self, model: ir.Model) -> None:
        """Write the model (after moving or embedding every tensor as the mode says)."""
        try:
            if self._data is None:
                write_embedded(model, self.path)
            else:
                with _relocated(model, self):
                    ir.save(model, self.path)
                self._data.close()
        except OSError as error:
            raise BadInput(f"{self.destination}: cannot write the model ({error.strerror or error})") from None
        self._saved = True

    def commit(self) -> list[Path]:
        """Move the staged files next to ``destination``; return their final paths."""
        if not self._saved:
            raise RuntimeError("commit() before save()")
        names = ([self.data_name] if self.data_name else []) + [self.destination.name]
        final = []
        for name in names:
            target = self.destination.parent / name
            os.replace(self.folder / name, target)
            final.append(target)
        self.discard()
        return final

    def discard(self) -> None:
        """Delete the staging folder and whatever is left in it."""
        if self._data is not None and not self._data.closed:
            self._data.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> StagedOutput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()


#: Bytes per write() call.  On the machines measured, 1 MiB writes into a fresh
#: file ran 2 to 3 times faster than 64 MiB ones, which make the kernel find
#: all their page-cache pages in one call.
WRITE_BYTES = 1 << 20


def _reserve(file, offset: int, length: int) -> None:
    """Allocate the side file's blocks for a tensor before writing it.

    Measured on a 1 GiB model (4 x 8192 x 8192 fp32, ``--external-data``, 5 runs
    each): median 1.4 s with the blocks reserved first, 2.9 s without; the file
    system then need not find blocks while dirty pages are written back.  It
    also reports a full disk before any of the tensor is written.  File systems
    without ``fallocate`` just skip it.
    """
    try:
        os.posix_fallocate(file.fileno(), offset, length)
    except OSError as error:
        if error.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise


def _write_array(file, array: np.ndarray) -> None:
    """Write an array's bytes (C order, native = little-endian layout) in WRITE_BYTES slices."""
    data = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    for start in range(0, data.nbytes, WRITE_BYTES):
        chunk = data[start : start + WRITE_BYTES]
        while chunk:
            written = file.write(chunk)
            chunk = chunk[written:]


class TensorWriter:
    """Writes one tensor into a staged side file block by block (C order), then describes it.

    Blocks are consecutive slices along the tensor's first axis.  :meth:`abort`
    takes back what was written, so a caller can still store something else.
    """

    def __init__(self, staged: StagedOutput, like: ir.TensorProtocol) -> None:
        self.staged = staged
        self.like = like
        self.file = staged._data
        self.start = self.file.tell()
        try:
            _reserve(self.file, self.start, like.nbytes)
        except OSError as error:
            raise BadInput(f"{staged.destination}: cannot write the side file ({error.strerror})") from None

    def write(self, block: np.ndarray) -> None:
        try:
            _write_array(self.file, block)
        except OSError as error:
            raise BadInput(f"{self.staged.destination}: cannot write the side file ({error.strerror})") from None

    def abort(self) -> None:
        self.file.seek(self.start)
        self.file.truncate()

    def finish(self) -> ir.ExternalTensor:
        length = self.file.tell() - self.start
        if length != self.like.nbytes:
            raise RuntimeError(f"wrote {length} bytes for '{self.like.name}', expected {self.like.nbytes}")
        like = self.like
        return ir.ExternalTensor(
            self.staged.data_name,
            self.start,
            length,
            like.dtype,
            shape=like.shape,
            name=like.name,
            doc_string=like.doc_string,
            metadata_props=dict(like.metadata_props) or None,
            base_dir=self.staged.folder,
        )


class _relocated:
    """While saving with external data: every large tensor in the staged side file.

    Large tensors not yet there (unpruned weights, wherever they live) are
    streamed into it, their source mapping released after each; small tensors
    from IN's side files are read into memory to be embedded.  The model's
    original tensors are put back afterwards (the staged ones stay).
    """

    def __init__(self, model: ir.Model, staged: StagedOutput) -> None:
        self.model = model
        self.staged = staged
        self.swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []

    def _ours(self, tensor: ir.TensorProtocol) -> bool:
        return isinstance(tensor, ir.ExternalTensor) and Path(tensor.base_dir) == self.staged.folder

    def __enter__(self) -> None:
        for graph in self.model.graphs():
            for value in graph.initializers.values():
                tensor = value.const_value
                if tensor is None or self._ours(tensor):
                    continue
                external = isinstance(tensor, ir.ExternalTensor)
                if tensor.nbytes > StagedOutput.EMBED_BYTES:
                    replacement = self.staged.store(tensor)
                elif external:
                    replacement = ir.Tensor(np.array(tensor.numpy()), dtype=tensor.dtype, name=tensor.name)
                else:
                    continue
                if external:
                    tensor.release()
                self.swapped.append((value, tensor))
                value.const_value = replacement

    def __exit__(self, *exc_info: object) -> None:
        for value, tensor in self.swapped:
            value.const_value = tensor
