"""The GPU benchmark harness: what 2:4 sparsity buys on an NVIDIA GPU, measured.

Two backends:

``--backend torch`` (cuSPARSELt through PyTorch)
    For every 2:4 MatMul/Gemm weight of the model (dense-pruned or compressed),
    times the layer's product at its real activation shape (``--tokens`` rows)
    with the weight as a dense matrix and as a semi-structured sparse one
    (``torch.sparse.to_sparse_semi_structured``), in float16 and bfloat16, checks
    the sparse result against the dense one, and reports per-layer speedups,
    the time-weighted total, and the layers too small to gain.

``--backend tensorrt``
    Builds two engines from the same (expanded, dense-pruned) model, without and
    with the sparse-weights builder flag, times both the same way, and reports the
    speedup and which layers TensorRT found eligible for sparse math and which it
    ran with sparse tactics (from its builder log and its engine inspector).
    ``--precision fp16`` converts the model's float weights and inputs to float16
    first, which TensorRT 11 (strongly typed networks, no FP16 builder flag)
    needs for half-precision kernels.

Timing: ``--warmup`` runs, then ``--iterations`` runs each timed with CUDA events;
median, p90 and throughput are reported.  Nothing is compared against a fixed
number: the script prints what it measured.

Exit codes: 0 done; 2 bad input or usage; 3 a needed runtime is missing (no
CUDA GPU, no PyTorch, no TensorRT): one line says which and how to get it.
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._version import __version__
from ..core import decompress, is_24
from ..errors import BadInput, MissingRuntime
from ..modelio.compressed import compressed_entries
from ..modelio.load import load_model

# ----------------------------------------------------------------------------- model preparation


@dataclass
class Layer:
    """One 2:4 weight as the GEMM a Sparse Tensor Core runs: ``(rows x K) @ (K x tokens)``.

    ``weight`` is the sparse operand, shape ``(rows, K)``, 2:4 along K (axis 1).
    """

    name: str
    op: str
    weight: np.ndarray
    skip: str = ""


def sparse_layers(model_path: str | Path) -> list[Layer]:
    """The model's 2:4 MatMul/Gemm weights, each as ``(out_features, K)`` with K along axis 1.

    Works on dense-pruned models (weights that are 2:4 along their reduction axis)
    and on compressed ones (decompressed from their values and metadata).
    """
    from ..modelio.compressed import read_sparse_weights
    from ..passes import FindWeights

    model = load_model(model_path)
    layers = []
    try:
        for name, sparse in read_sparse_weights(model).items():
            if len(sparse.shape) == 2:
                layers.append(Layer(name, "compressed", np.moveaxis(decompress(sparse), sparse.axis, 1)))
    except ValueError as error:
        raise BadInput(f"{model_path}: cannot read the compressed weights: {error}") from None
    for record in FindWeights(tc_shapes="off")(model).weights:
        if record.axis is None or len(record.shape) != 2 or record.source is None:
            continue
        if not {u.op_type for u in record.uses} <= {"MatMul", "Gemm"}:
            continue
        weights = record.source.tensor.numpy()
        if not is_24(weights, record.axis):
            continue
        layers.append(Layer(record.name, record.op_types, np.ascontiguousarray(np.moveaxis(weights, record.axis, 1))))
    return layers


#: cuSPARSELt's semi-structured layout needs these multiples (rows, K) for fp16/bf16.
SEMI_STRUCTURED_MULTIPLES = (32, 64)


def eligibility(layer: Layer, tokens: int) -> str:
    """Why a layer cannot be timed as semi-structured sparse ('' if it can)."""
    rows, k = layer.weight.shape
    if rows % SEMI_STRUCTURED_MULTIPLES[0] or k % SEMI_STRUCTURED_MULTIPLES[1]:
        return (
            f"shape {rows}x{k}: semi-structured sparse tensors need rows % {SEMI_STRUCTURED_MULTIPLES[0]} == 0 "
            f"and K % {SEMI_STRUCTURED_MULTIPLES[1]} == 0"
        )
    if tokens % 8:
        return f"--tokens {tokens}: must be a multiple of 8"
    return ""


def to_fp16_model(model_path: Path, out_path: Path) -> None:
    """Write a float16 copy of a model: float32 initializers, Constant tensors, inputs, outputs and Casts.

    For TensorRT 11, whose networks are strongly typed: without it a float32
    model builds float32 kernels, which have no sparse Tensor Core variant.
    Other float32 value_info types are dropped so that shape inference redoes them.
    """
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(model_path))

    def convert_tensor(tensor: TensorProto) -> None:
        if tensor.data_type == TensorProto.FLOAT:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))

    def convert_graph(graph) -> None:
        for tensor in graph.initializer:
            convert_tensor(tensor)
        for value in (*graph.input, *graph.output):
            if value.type.tensor_type.elem_type == TensorProto.FLOAT:
                value.type.tensor_type.elem_type = TensorProto.FLOAT16
        kept = [v for v in graph.value_info if v.type.tensor_type.elem_type != TensorProto.FLOAT]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        for node in graph.node:
            for attribute in node.attribute:
                if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                    attribute.i = TensorProto.FLOAT16
                if attribute.HasField("t"):
                    convert_tensor(attribute.t)
                if attribute.HasField("g"):
                    convert_graph(attribute.g)
                for sub in attribute.graphs:
                    convert_graph(sub)

    convert_graph(model.graph)
    onnx.save(model, str(out_path))


def prepare_for_tensorrt(model_path: Path, folder: Path, precision: str) -> Path:
    """Expand a compressed model (TensorRT's parser does not fold the subgraph) and convert to fp16 if asked."""
    from ..modelio.expand import expand_weights
    from ..modelio.writer import write_embedded

    model = load_model(model_path)
    path = model_path
    try:
        compressed = bool(compressed_entries(model))
    except ValueError as error:
        raise BadInput(f"{model_path}: cannot read the compressed weights: {error}") from None
    if compressed:
        expand_weights(model)
        path = folder / "expanded.onnx"
        write_embedded(model, path)
    if precision == "fp16":
        converted = folder / "fp16.onnx"
        to_fp16_model(path, converted)
        path = converted
    return path


# ----------------------------------------------------------------------------- TensorRT log parsing

_ELIGIBLE = re.compile(r"\(Sparsity\) Layers eligible for sparse math:\s*(.*)$")
_PICKED = re.compile(r"\(Sparsity\) TRT inference plan picked sparse implementation for layers:\s*(.*)$")


def parse_sparsity_log(lines: list[str]) -> dict[str, list[str]]:
    """The layers TensorRT's builder log names as eligible for sparse math, and those it ran sparse.

    TensorRT prints, with the sparse-weights flag set, lines such as
    ``(Sparsity) Layers eligible for sparse math: conv1, fc2`` and
    ``(Sparsity) TRT inference plan picked sparse implementation for layers: fc2``.
    """
    found: dict[str, list[str]] = {"eligible": [], "picked": []}
    for line in lines:
        for key, pattern in (("eligible", _ELIGIBLE), ("picked", _PICKED)):
            match = pattern.search(line)
            if match:
                found[key].extend(n.strip() for n in match.group(1).split(",") if n.strip())
    return found


def sparse_tactics(inspector_json: str) -> list[str]:
    """Layers whose tactic (from the engine inspector's JSON, detailed verbosity) is a sparse kernel."""
    try:
        info = json.loads(inspector_json)
    except ValueError:
        return []
    names = []
    for layer in info.get("Layers", []):
        if isinstance(layer, dict):
            tactic = str(layer.get("TacticName", "")) + " " + str(layer.get("Metadata", ""))
            if "sparse" in tactic.lower():
                names.append(str(layer.get("Name", "")))
    return names


# ----------------------------------------------------------------------------- timing and report


@dataclass
class Timing:
    """Latencies of repeated runs, in milliseconds."""

    median_ms: float
    p90_ms: float
    runs: int

    @classmethod
    def of(cls, samples_ms: list[float]) -> Timing:
        ordered = sorted(samples_ms)
        p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
        return cls(statistics.median(ordered), p90, len(ordered))


@dataclass
class LayerResult:
    name: str
    shape: list[int]
    dtype: str
    dense: Timing | None = None
    sparse: Timing | None = None
    max_rel_diff: float | None = None
    skip: str = ""

    @property
    def speedup(self) -> float | None:
        if self.dense is None or self.sparse is None or self.sparse.median_ms <= 0:
            return None
        return self.dense.median_ms / self.sparse.median_ms


@dataclass
class TorchReport:
    device: str
    versions: dict[str, str]
    tokens: int
    layers: list[LayerResult] = field(default_factory=list)

    def totals(self) -> dict[str, float | None]:
        """Per dtype: the summed dense time over the summed sparse time (the time-weighted speedup)."""
        out: dict[str, float | None] = {}
        for dtype in sorted({r.dtype for r in self.layers}):
            timed = [r for r in self.layers if r.dtype == dtype and r.speedup is not None]
            dense = sum(r.dense.median_ms for r in timed)
            sparse = sum(r.sparse.median_ms for r in timed)
            out[dtype] = dense / sparse if sparse else None
        return out


#: Below this speedup a layer is flagged as too small to gain.
SMALL_GAIN = 1.05


def format_torch_report(report: TorchReport) -> str:
    lines = [
        f"device: {report.device}; " + ", ".join(f"{k} {v}" for k, v in report.versions.items()),
        f"activation rows (tokens): {report.tokens}",
        f"{'layer':<40} {'rows x K':>12} {'dtype':>9} {'dense ms':>9} {'sparse ms':>10} {'speedup':>8} "
        f"{'max rel diff':>12}  note",
    ]
    for r in report.layers:
        shape = "x".join(map(str, r.shape))
        if r.skip:
            lines.append(f"{r.name[-40:]:<40} {shape:>12} {r.dtype:>9} {'-':>9} {'-':>10} {'-':>8} {'-':>12}  {r.skip}")
            continue
        note = "too small to gain" if r.speedup is not None and r.speedup < SMALL_GAIN else ""
        lines.append(
            f"{r.name[-40:]:<40} {shape:>12} {r.dtype:>9} {r.dense.median_ms:>9.4f} {r.sparse.median_ms:>10.4f} "
            f"{r.speedup:>7.2f}x {r.max_rel_diff:>12.2e}  {note}"
        )
    for dtype, total in report.totals().items():
        lines.append(f"time-weighted total speedup ({dtype}): " + (f"{total:.2f}x" if total else "n/a"))
    return "\n".join(lines)


def _require_torch_gpu():
    try:
        import torch
    except ImportError:
        raise MissingRuntime(
            "--backend torch needs PyTorch with CUDA (pip install torch, on a machine with an NVIDIA GPU)"
        ) from None
    if not torch.cuda.is_available():
        raise MissingRuntime("--backend torch needs a CUDA GPU (Ampere or later); torch.cuda.is_available() is False")
    try:
        from torch.sparse import to_sparse_semi_structured  # noqa: F401
    except ImportError:
        raise MissingRuntime(
            f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured (needs PyTorch 2.1 or later)"
        ) from None
    major, _ = torch.cuda.get_device_capability()
    if major < 8:
        raise MissingRuntime(
            f"{torch.cuda.get_device_name()} has no Sparse Tensor Cores (compute capability {major}.x; needs 8.0+)"
        )
    return torch


def _time_cuda(torch, function, warmup: int, iterations: int) -> Timing:
    for _ in range(warmup):
        function()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iterations):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop))
    return Timing.of(samples)


def run_torch(layers: list[Layer], tokens: int, dtypes: list[str], warmup: int, iterations: int) -> TorchReport:
    """Time each layer dense and 2:4 semi-structured sparse with PyTorch (cuSPARSELt)."""
    torch = _require_torch_gpu()
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    SparseSemiStructuredTensor._FORCE_CUTLASS = False  # cuSPARSELt where available
    report = TorchReport(
        torch.cuda.get_device_name(),
        {"torch": torch.__version__, "cuda": str(torch.version.cuda), "sparse24-onnx": __version__},
        tokens,
    )
    for layer in layers:
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            result = LayerResult(layer.name, list(layer.weight.shape), dtype_name)
            result.skip = eligibility(layer, tokens)
            if not result.skip:
                weight = torch.from_numpy(np.ascontiguousarray(layer.weight, dtype=np.float32)).to("cuda", dtype)
                activations = torch.randn(layer.weight.shape[1], tokens, device="cuda", dtype=dtype)
                try:
                    sparse = to_sparse_semi_structured(weight)
                except (RuntimeError, ValueError) as error:
                    result.skip = f"not convertible to semi-structured: {str(error).splitlines()[0]}"
                else:
                    dense_out = torch.mm(weight, activations)
                    sparse_out = torch.mm(sparse, activations)
                    scale = dense_out.abs().max().clamp_min(1e-6)
                    result.max_rel_diff = float(((sparse_out - dense_out).abs().max() / scale).item())
                    dense_mm = lambda w=weight, a=activations: torch.mm(w, a)  # noqa: E731
                    sparse_mm = lambda w=sparse, a=activations: torch.mm(w, a)  # noqa: E731
                    result.dense = _time_cuda(torch, dense_mm, warmup, iterations)
                    result.sparse = _time_cuda(torch, sparse_mm, warmup, iterations)
            report.layers.append(result)
    return report


def run_tensorrt(model_path: Path, precision: str, warmup: int, iterations: int, shapes: dict[str, tuple[int, ...]]):
    """Build a dense and a sparse-weights engine from the same model, time both, collect sparsity info."""
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingRuntime(
            "--backend tensorrt needs TensorRT's Python package (tensorrt, from NVIDIA), on a machine with an "
            "NVIDIA GPU; it is not installed here"
        ) from None
    torch = _require_torch_gpu()  # device buffers and CUDA events

    class Logger(trt.ILogger):
        """Keeps every builder message, for the sparsity lines."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.lines: list[str] = []

        def log(self, severity, message) -> None:
            self.lines.append(str(message))

    with tempfile.TemporaryDirectory(prefix="sparse24-trt-") as folder:
        prepared = prepare_for_tensorrt(model_path, Path(folder), precision)
        results = {}
        for sparse in (False, True):
            logger = Logger()
            lines = logger.lines
            builder = trt.Builder(logger)
            flags = 0
            strongly_typed = not hasattr(trt.BuilderFlag, "FP16")
            if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
                flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(prepared)):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise BadInput(f"TensorRT cannot parse the model: {errors}")
            config = builder.create_builder_config()
            config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
            if precision == "fp16" and not strongly_typed:
                config.set_flag(trt.BuilderFlag.FP16)
            if sparse:
                config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
            profile = builder.create_optimization_profile()
            for i in range(network.num_inputs):
                tensor = network.get_input(i)
                dims = shapes.get(tensor.name) or tuple(d if d > 0 else 1 for d in tensor.shape)
                profile.set_shape(tensor.name, dims, dims, dims)
            config.add_optimization_profile(profile)
            plan = builder.build_serialized_network(network, config)
            if plan is None:
                raise BadInput("TensorRT could not build an engine: " + (lines[-1] if lines else "no log"))
            engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
            context = engine.create_execution_context()
            buffers = []
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                    dims = shapes.get(name) or tuple(d if d > 0 else 1 for d in engine.get_tensor_shape(name))
                    context.set_input_shape(name, dims)
                shape = tuple(context.get_tensor_shape(name))
                dtype = {trt.DataType.HALF: torch.float16, trt.DataType.FLOAT: torch.float32}.get(
                    engine.get_tensor_dtype(name), torch.float32
                )
                buffer = torch.randn(shape, device="cuda").to(dtype)
                buffers.append(buffer)
                context.set_tensor_address(name, buffer.data_ptr())
            stream = torch.cuda.current_stream()
            execute = lambda c=context, s=stream: c.execute_async_v3(s.cuda_stream)  # noqa: E731
            timing = _time_cuda(torch, execute, warmup, iterations)
            inspector = engine.create_engine_inspector()
            detail = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
            results["sparse" if sparse else "dense"] = {
                "timing": asdict(timing),
                "log": parse_sparsity_log(lines),
                "sparse_tactics": sparse_tactics(detail),
            }
        dense, sparse = results["dense"]["timing"], results["sparse"]["timing"]
        return {
            "tensorrt": trt.__version__,
            "device": torch.cuda.get_device_name(),
            "precision": precision,
            "dense": results["dense"],
            "sparse": results["sparse"],
            "speedup": dense["median_ms"] / sparse["median_ms"] if sparse["median_ms"] else None,
        }
