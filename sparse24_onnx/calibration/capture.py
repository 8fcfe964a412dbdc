"""Calibration: the statistics of each prunable layer's input, captured with onnxruntime.

The activations that feed the weights' layers are exposed as extra graph
outputs, the model runs on each calibration feed, and per *distinct layer input*
the running sums the methods need are accumulated: ``sum of X_j^2`` per reduction
index ``j`` (Wanda) and ``X^T X`` (SparseGPT, ADMM, the refit, the layer output
error).  Weights that read the same input (q/k/v projections, gate/up) share one
statistics object.  Only one feed's activations are held at a time.

``X`` is the layer input seen as rows of ``K`` features, ``K`` the weight's
reduction axis: ``MatMul(X, W)`` and ``Gemm(X, W)`` read ``X``'s last axis
(a transposed ``X`` of a ``Gemm`` with ``transA=1`` is turned back), ``MatMul(W, X)``
its second-to-last, and ``Conv`` its channels (axis 1).  A weight used by several
nodes gets the sum over all of them.

Precision and memory: each feed's ``X^T X`` is one float32 matrix product (what
BLAS does fastest) added into a float32 total; solvers copy the totals to float64.
``held_out`` keeps the part of ``X^T X`` from held-out rows (every 4th feed, or
every 4th row when there are fewer than 4 feeds), from which the methods choose
what generalises.  When the statistics of all layers would exceed ``memory_bytes``,
the layers are captured in several passes over the calibration feeds, a group
at a time, each group's statistics written to ``spill`` (memory-mapped back), so
memory holds one group's statistics at most.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from ..choices import ROWS_PER_FEATURE
from ..passes.op_rules import data_operand
from ..passes.weights import WeightRecord
from ..runtime.sessions import open_model_session, run_feeds

__all__ = ["LayerStats", "collect_stats", "input_rows", "memory_budget", "permute_stats", "stats_bytes"]

log = logging.getLogger("sparse24_onnx")

#: Largest K for which X^T X is accumulated (K x K float32).
MAX_HESSIAN_K = 16384
#: Rows of a layer input gathered (per input, in bytes) before their X^T X is computed in one product: this,
#: or as many rows as K when that is more (the pending rows then take no more memory than X^T X itself;
#: a 2048-wide product runs 1.6x faster per row on 2048 rows than on 512).
PENDING_BYTES = 4 << 20
#: Pending rows of all layer inputs of a capture pass together: above this, every input's are multiplied in
#: after the feed (so that many large inputs, each holding up to K rows, do not add up: 22 decoder layers
#: would hold ~2 GiB).
PENDING_TOTAL_BYTES = 256 << 20


@dataclass
class LayerStats:
    """Running input statistics of one layer input (shared by every weight that reads it).

    Attributes:
        rows: Number of input rows (tokens, pixels ...) seen, held-out ones included.
        sq_norm: ``(K,)`` sum of the squares of each input feature (float64).
        hessian: ``(K, K)`` ``X^T X`` over all rows (float32; memory-mapped when
            spilled), or None when not collected (K too large).  For a 2-D Conv it is
            over the im2col patches, ``K = kh * kw * C`` with the channels fastest
            (``im2col`` is then True), while ``sq_norm`` stays per input channel.
        held_out: The part of ``hessian`` from the held-out rows, or None.
        held_out_rows: How many rows that is (of ``hessian_rows``).
        hessian_rows: How many rows ``hessian`` was accumulated over: ``rows``, or a sample of them
            (:data:`ROWS_PER_FEATURE`), each sampled row weighted so that the sum estimates all rows'.
    """

    rows: int
    sq_norm: np.ndarray
    hessian: np.ndarray | None
    im2col: bool = False
    held_out: np.ndarray | None = None
    held_out_rows: int = 0
    #: Why ``hessian`` is None (empty when it is there).
    no_hessian: str = ""
    #: Why no row was seen (empty when some were).
    no_rows: str = ""
    #: Rows left out because they held NaN or Inf (the model's own activations overflowed), and on which feeds.
    non_finite_rows: int = 0
    non_finite_feeds: list[int] = field(default_factory=list)
    hessian_rows: int = 0
    #: The rows ``X^T X`` could have taken (a convolution's patches: output pixels, not ``rows``).
    hessian_available: int = 0

    @property
    def sampled(self) -> bool:
        """Whether ``X^T X`` comes from a sample of the rows."""
        return self.hessian is not None and self.hessian_rows < self.hessian_available

    def fit_hessian(self) -> np.ndarray:
        """``X^T X`` over the rows that are not held out (float32, as accumulated: the solvers copy it to
        float64 as they need, so that a large K costs one float64 copy, not one per step)."""
        total = np.asarray(self.hessian)
        return total if self.held_out is None else total - np.asarray(self.held_out)

    def full_hessian(self) -> np.ndarray:
        """``X^T X`` over every row (float32; the array itself)."""
        return np.asarray(self.hessian)

    def held_out_hessian(self) -> np.ndarray | None:
        return None if self.held_out is None else np.asarray(self.held_out)

    def subset(self, features: np.ndarray, channels: np.ndarray) -> LayerStats:
        """The statistics of some of the input's features, in the given order (a new object): ``X^T X`` and
        its held-out part restricted to ``features``, ``sum of X_j^2`` to ``channels``."""

        def square(matrix):
            return None if matrix is None else np.asarray(matrix)[np.ix_(features, features)]

        return LayerStats(
            self.rows,
            self.sq_norm[channels],
            square(self.hessian),
            im2col=self.im2col,
            held_out=square(self.held_out),
            held_out_rows=self.held_out_rows,
            no_hessian=self.no_hessian,
            non_finite_rows=self.non_finite_rows,
            non_finite_feeds=self.non_finite_feeds,
            hessian_rows=self.hessian_rows,
            hessian_available=self.hessian_available,
        )

    @property
    def groups(self) -> int:
        """How many ``X^T X`` there are: a grouped convolution's groups (1 otherwise)."""
        return 1 if self.hessian is None or np.ndim(self.hessian) == 2 else int(self.hessian.shape[0])

    def group(self, index: int) -> LayerStats:
        """The statistics of one group of a grouped convolution (its ``X^T X`` and held-out part)."""
        return LayerStats(
            self.rows,
            self.sq_norm,
            self.hessian[index],
            im2col=self.im2col,
            held_out=None if self.held_out is None else self.held_out[index],
            held_out_rows=self.held_out_rows,
            hessian_rows=self.hessian_rows,
            hessian_available=self.hessian_available,
        )


def _data_value(node: ir.Node, index: int, shape: tuple[int, ...]) -> tuple[ir.Value, str | ConvPatches] | None:
    """The activation feeding the layer that reads a weight at ``index``, and how to read its rows.

    ``shape`` is the weight's shape as its product sees it (the traced shape: through casts and
    dequantization it is the stored one).
    """
    found = data_operand(node, index)
    if found is None:
        return None
    value, layout = found
    return value, (ConvPatches.of(node, shape) if layout == "channels" else layout)


@dataclass(frozen=True)
class ConvPatches:
    """How an ungrouped Conv (1-D, 2-D or 3-D) reads its input: the im2col view SparseGPT needs.

    ``kernel`` is ``None`` for convolutions this view does not cover (grouped ones),
    which get the per-channel statistics only; ``why`` then says why.
    """

    kernel: tuple[int, ...] | None
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    why: str = ""
    #: A grouped convolution's groups: one ``X^T X`` per group, over that group's input channels.
    groups: int = 1

    @classmethod
    def of(cls, node: ir.Node, shape: tuple[int, ...]) -> ConvPatches:
        spatial = len(shape) - 2
        group = node.attributes.get_int("group", 1)
        if spatial < 1:
            return cls(None, why=f"a Conv weight of rank {len(shape)}")
        if group != 1 and shape[0] % group:
            return cls(None, why=f"a grouped convolution (group={group}) whose outputs do not divide into groups")
        return cls(
            tuple(int(d) for d in shape[2:]),
            tuple(node.attributes.get_ints("strides", [1] * spatial)),
            tuple(node.attributes.get_ints("pads", [0] * (2 * spatial))),
            tuple(node.attributes.get_ints("dilations", [1] * spatial)),
            node.attributes.get_string("auto_pad", "NOTSET"),
            groups=group,
        )

    def _pads(self, sizes: tuple[int, ...]) -> list[tuple[int, int]]:
        """(before, after) padding per spatial axis, from ``pads`` or ``auto_pad`` (ONNX's rule)."""
        n = len(self.kernel)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            result = []
            for size, k, s, d in zip(sizes, self.kernel, self.strides, self.dilations, strict=True):
                total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
                small = total // 2
                result.append((small, total - small) if self.auto_pad == "SAME_UPPER" else (total - small, small))
            return result
        if self.auto_pad == "VALID":
            return [(0, 0)] * n
        return [(self.pads[i], self.pads[i + n]) for i in range(n)]

    def _out(self, sizes: tuple[int, ...]) -> list[int]:
        """The output's spatial sizes for an input of spatial ``sizes`` (ONNX's rule)."""
        pads = self._pads(sizes)
        spec = zip(sizes, pads, self.kernel, self.strides, self.dilations, strict=True)
        return [(size + before + after - d * (k - 1) - 1) // s + 1 for size, (before, after), k, s, d in spec]

    def positions(self, shape: tuple[int, ...]) -> int:
        """How many patches (output pixels over the batch) an input of ``shape`` gives."""
        return shape[0] * int(np.prod(self._out(tuple(shape[2:]))))

    def rows(self, x: np.ndarray, sample: np.ndarray | None = None) -> np.ndarray:
        """``(N * outputs, prod(kernel) * C)`` patches, features in (kernel position, channel) order.

        With channels fastest, 4 consecutive features are 4 consecutive input
        channels at one kernel position: the groups of 4 TensorRT prunes a Conv
        weight in.  ``sample``: only these patches (indices in that order), gathered
        without building the others.
        """
        n, c, *sizes = x.shape
        out = self._out(tuple(sizes))
        x = np.pad(x, ((0, 0), (0, 0), *self._pads(tuple(sizes))))
        moved = np.moveaxis(x, 1, -1)  # channels last: (N, *spatial, C)
        positions = int(np.prod(self.kernel))
        if sample is not None:
            # Each sampled patch's corner (batch, output pixel), then one gather per kernel position.
            corner = np.unravel_index(sample, (n, *out))
            patches = np.empty((len(sample), *self.kernel, c), dtype=x.dtype)
            for position in np.ndindex(*self.kernel):
                index = tuple(
                    o * s + p * d for o, p, d, s in zip(corner[1:], position, self.dilations, self.strides, strict=True)
                )
                patches[(slice(None), *position)] = moved[(corner[0], *index)]
            return patches.reshape(len(sample), positions * c)
        patches = np.empty((n, *out, *self.kernel, c), dtype=x.dtype)
        for position in np.ndindex(*self.kernel):  # one strided slice per kernel position, whole arrays each
            window = tuple(
                slice(p * d, p * d + s * (o - 1) + 1, s)
                for p, d, s, o in zip(position, self.dilations, self.strides, out, strict=True)
            )
            patches[(slice(None), *([slice(None)] * len(out)), *position)] = moved[(slice(None), *window)]
        return patches.reshape(n * int(np.prod(out)), positions * c)

    def features(self, channels: int) -> int:
        """K of one (group's) ``X^T X``: kernel positions times the input channels of a group."""
        return int(np.prod(self.kernel)) * channels if self.kernel else channels

    def by_group(self, patches: np.ndarray) -> np.ndarray:
        """Patches ``(n, positions * C)`` as ``(groups, n, positions * C / groups)``: each group's own
        channels, still channels fastest (2-D patches as they are when there is one group)."""
        if self.groups == 1:
            return patches
        n = patches.shape[0]
        positions = int(np.prod(self.kernel))
        split = patches.reshape(n, positions, self.groups, -1).transpose(2, 0, 1, 3)
        return np.ascontiguousarray(split).reshape(self.groups, n, -1)


def input_rows(array: np.ndarray, layout: str | ConvPatches, dtype=np.float64) -> np.ndarray:
    """An activation as ``(n, K)`` rows of features (see the module docstring); per channel for a Conv."""
    array = np.asarray(array, dtype=dtype)
    if isinstance(layout, ConvPatches):
        layout = "channels"
    if layout == "last":
        return array.reshape(-1, array.shape[-1])
    if layout == "second_last":
        return np.moveaxis(array, -2, -1).reshape(-1, array.shape[-2])
    if layout == "first":
        return array.reshape(array.shape[0], -1).T
    if layout == "channels":
        return np.moveaxis(array, 1, -1).reshape(-1, array.shape[1])
    raise ValueError(layout)


def layer_inputs(model: ir.Model, records: list[WeightRecord]) -> dict[str, list[tuple[ir.Value, str]]]:
    """Per weight, the activations that feed its products: in the main graph, or inside ``If`` branches and
    ``Loop`` bodies (nested too), whose values the capture exposes through them (see :func:`_expose`).
    Weights whose products sit in ``Scan`` bodies or functions are left out.

    The products are the nodes the tracing reached (``record.uses``), so weights
    reaching them through casts, transposes or dequantization count too.  A
    convolution whose weight was transposed or reshaped on the way is left out
    (its im2col view would not match the stored layout).
    """
    owners = _branch_owners(model)
    found: dict[str, list[tuple[ir.Value, str]]] = {}
    for record in records:
        pairs = []
        for use in record.uses:
            node = use.ref if use.ref is not None and _reachable(use.ref.graph, model, owners) else None
            reordered = any(op in ("Transpose", "Reshape", "Flatten", "Unsqueeze", "Squeeze") for op in use.via)
            data = None if node is None else _data_value(node, use.input_index, record.shape)
            if data is None or data[0] is None or not data[0].name or (node.op_type == "Conv" and reordered):
                pairs = []
                break
            pairs.append(data)
        if pairs:
            found[record.name] = pairs
    return found


@dataclass
class _Input:
    """One statistics accumulator: the layer inputs it sums (one value, or several read by the same weights
    alike, as the time steps of an unrolled recurrent layer), how their rows are read, and K."""

    sources: list[tuple[ir.Value, str | ConvPatches]]
    features: int  # K of the Hessian (im2col: kh * kw * C)
    channels: int  # K of sq_norm
    stats: LayerStats | None = None
    weights: list[str] = field(default_factory=list)
    #: Most rows of one feed that ``X^T X`` takes (0: all): :data:`ROWS_PER_FEATURE`.
    cap: int = 0
    #: Feature rows waiting to be multiplied in one larger product (fit rows, held-out rows).
    pending: tuple[list[np.ndarray], list[np.ndarray]] = field(default_factory=lambda: ([], []))

    @property
    def layout(self) -> str | ConvPatches:
        """How the rows are read (the sources agree on everything but a convolution's strides and pads)."""
        return self.sources[0][1]

    def pending_bytes(self) -> int:
        return sum(part.nbytes for parts in self.pending for part in parts)

    def flush(self) -> None:
        """Add the pending rows' ``X^T X`` to the totals: one product per part (BLAS runs a
        2048-wide product ~2.5x faster per row on 512 rows than on 128); grouped patches
        ``(groups, rows, K)`` give one product per group."""
        fit, held = self.pending
        stats = self.stats
        if fit:
            rows = fit[0] if len(fit) == 1 else np.concatenate(fit, axis=-2)
            stats.hessian += np.swapaxes(rows, -1, -2) @ rows
        if held:
            rows = held[0] if len(held) == 1 else np.concatenate(held, axis=-2)
            product = np.swapaxes(rows, -1, -2) @ rows
            stats.hessian += product
            stats.held_out += product
        self.pending = ([], [])


def stats_bytes(features: int, channels: int, *, hessian: bool, hold_out: bool, groups: int = 1) -> int:
    """Bytes one layer input's statistics take (float32 ``X^T X`` per group, its held-out part, float64
    ``sq_norm``)."""
    matrices = (2 if hold_out else 1) if hessian and features <= MAX_HESSIAN_K else 0
    return groups * matrices * features * features * 4 + channels * groups * 8


def collect_stats(
    model: ir.Model,
    records: list[WeightRecord],
    feeds: list[dict[str, np.ndarray]],
    *,
    hessian: bool = True,
    hold_out: bool = False,
    memory_bytes: int | None = None,
    spill: Path | None = None,
    hint: str = "check the arrays of --calibration",
    rows_per_feature: int = ROWS_PER_FEATURE,
) -> dict[str, LayerStats]:
    """Run the model on ``feeds`` and accumulate the statistics of each weight's layer input.

    Args:
        hessian: Accumulate ``X^T X`` (else only ``sum of X_j^2``).
        hold_out: Also keep the held-out part of ``X^T X`` (see the module docstring).
        memory_bytes: Budget for the statistics held in memory at once; above it the
            layers are captured in several passes, each group spilled to ``spill``.
        spill: A folder for spilled statistics (default: a temporary one, removed at once:
            the spilled matrices stay memory-mapped until the returned statistics go).
        rows_per_feature: ``X^T X`` from at most this many rows per feature (K) over the feeds,
            a sample of each feed's rows (:data:`ROWS_PER_FEATURE`); 0: every row.

    Returns:
        Per weight name, its statistics (shared between weights that read the same input;
        summed over the inputs of a weight used by several nodes).  The model is left
        as it was.
    """
    per_weight = layer_inputs(model, records)
    by_record = {r.name: r for r in records}
    readers: dict[tuple[int, object], list[str]] = {}
    sizes: dict[tuple[int, object], tuple[int, int]] = {}
    sources: dict[tuple[int, object], tuple[ir.Value, str | ConvPatches]] = {}
    for weight, pairs in per_weight.items():
        record = by_record[weight]
        k = int(record.shape[record.axis]) if record.axis is not None else 1
        for value, layout in pairs:
            key = (id(value), layout)
            if key not in sources:  # sizes for the memory estimate (the arrays take the activations' own)
                im2col = isinstance(layout, ConvPatches) and layout.kernel is not None
                sources[key] = (value, layout)
                sizes[key] = (layout.features(k) if im2col else k, k)
                readers[key] = []
            readers[key].append(weight)
    # Layer inputs read by exactly the same weights, in the same way, share one accumulator: a weight used
    # by several nodes gets the sum of their inputs' statistics anyway, and one (K, K) sum instead of one
    # per node (an LSTM unrolled over 20 steps) saves their memory and the time to fill and add them.
    inputs: dict[tuple[int, object], _Input] = {}
    shared: dict[tuple, _Input] = {}
    for key, (value, layout) in sources.items():
        kind = layout if isinstance(layout, str) else ("conv", layout.kernel, layout.groups, layout.why)
        merge = (frozenset(readers[key]), kind, sizes[key])
        item = shared.get(merge)
        if item is None:
            item = shared[merge] = _Input([], *sizes[key], weights=readers[key])
        item.sources.append((value, layout))
        inputs[key] = item
    if not inputs:
        return {}
    if rows_per_feature and len(feeds):
        for item in shared.values():
            item.cap = max(1, -(-rows_per_feature * item.features // len(feeds)))
    groups = _passes(list(shared.values()), hessian, hold_out, memory_bytes)
    with tempfile.TemporaryDirectory(prefix="sparse24-stats-", ignore_cleanup_errors=True) as own:
        folder = spill or Path(own)
        for number, group in enumerate(groups, start=1):
            if len(groups) > 1:
                log.info("capture pass %d/%d: %d layer inputs", number, len(groups), len(group))
            _capture(model, group, feeds, hessian=hessian, hold_out=hold_out, hint=hint)
            if len(groups) > 1:
                for item in group:
                    _spill(item, folder)
        # Spilled matrices stay mapped after their files are removed (POSIX), so the folder can go.
    stats: dict[str, LayerStats] = {}
    for weight, pairs in per_weight.items():
        parts = [inputs[(id(value), layout)].stats for value, layout in pairs]  # an accumulator once
        unique = list({id(p): p for p in parts if p is not None}.values())
        if unique:
            stats[weight] = unique[0] if len(unique) == 1 else _sum(unique)
    return stats


def _passes(items: list[_Input], hessian: bool, hold_out: bool, memory_bytes: int | None) -> list[list[_Input]]:
    """Groups of layer inputs whose statistics fit the budget together (in graph order), one pass each."""
    if memory_bytes is None:
        return [items]
    groups: list[list[_Input]] = [[]]
    used = 0
    for item in items:
        conv_groups = item.layout.groups if isinstance(item.layout, ConvPatches) else 1
        size = stats_bytes(item.features, item.channels, hessian=hessian, hold_out=hold_out, groups=conv_groups)
        if groups[-1] and used + size > memory_bytes:
            groups.append([])
            used = 0
        groups[-1].append(item)
        used += size
    return groups


def _branch_owners(model: ir.Model) -> dict[int, tuple[ir.Node, str]]:
    """For every ``If`` branch and ``Loop`` body of the model (nested ones too): the node and the attribute."""
    owners: dict[int, tuple[ir.Node, str]] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in ("", "ai.onnx") or node.op_type not in _CONTROL_FLOW:
            continue
        for name in _CONTROL_FLOW[node.op_type]:
            attribute = node.attributes.get(name)
            if attribute is not None and attribute.type == ir.AttributeType.GRAPH:
                owners[id(attribute.value)] = (node, name)
    return owners


#: Ops whose subgraphs the capture can expose values from, and the attributes holding them.
_CONTROL_FLOW = {"If": ("then_branch", "else_branch"), "Loop": ("body",)}


def _reachable(graph, model: ir.Model, owners: dict[int, tuple[ir.Node, str]]) -> bool:
    """The main graph, or a subgraph of ``If``/``Loop`` nodes all the way up to it."""
    while graph is not model.graph:
        if id(graph) not in owners:
            return False
        graph = owners[id(graph)][0].graph
    return graph is not None


def _expose(value: ir.Value, model: ir.Model, owners, undo: list) -> tuple[ir.Value, int]:
    """A main-graph value that carries ``value``, and how many ``Loop`` iteration axes were stacked before
    its own axes: itself (0), or a new output of the ``If``/``Loop`` nodes around it.

    In an ``If``, the branch holding ``value`` gets it as an extra output, the other branch an empty tensor
    of the same element type (so a feed that takes the other branch gives no rows), and the ``If`` an extra
    output.  In a ``Loop``, the body gets it as an extra scan output, which the ``Loop`` stacks over the
    iterations (a layer run once per step gives every step's rows).  Nested subgraphs repeat this outwards.
    Every change is recorded in ``undo`` (callables, run in reverse).
    """
    graph = value.graph
    if graph is model.graph:
        return value, 0
    node, name = owners[id(graph)]
    dtype = _element_type(value)
    graph.outputs.append(value)
    undo.append(graph.outputs.pop)
    if node.op_type == "If":
        other = node.attributes["else_branch" if name == "then_branch" else "then_branch"].value
        empty = ir.node(
            "Constant", [], attributes={"value": ir.tensor(np.zeros((0,), dtype=dtype.numpy()))}, num_outputs=1
        )
        empty.outputs[0].name = f"{value.name}_sparse24_not_taken"
        other.append(empty)
        other.outputs.append(empty.outputs[0])
        undo.append(lambda: (other.outputs.pop(), other.remove(empty)))
    count = len(node.outputs)
    node.resize_outputs(count + 1)
    carried = node.outputs[count]
    carried.name = f"{value.name}_sparse24_capture"
    carried.dtype = dtype
    undo.append(lambda: node.resize_outputs(count))
    outer, stacked = _expose(carried, model, owners, undo)
    return outer, stacked + (node.op_type == "Loop")


def _element_type(value: ir.Value) -> ir.DataType:
    """A value's element type; inside subgraphs exporters often record none, so then the type of another
    operand of the product it feeds (MatMul, Gemm and Conv take one type), else float."""
    if value.dtype is not None:
        return value.dtype
    for consumer, _ in value.uses():
        for other in (*consumer.inputs, *consumer.outputs):
            if other is not None and other is not value and other.dtype is not None:
                return other.dtype
    return ir.DataType.FLOAT


def _capture(
    model: ir.Model,
    group: list[_Input],
    feeds: list[dict[str, np.ndarray]],
    *,
    hessian: bool,
    hold_out: bool,
    hint: str,
) -> None:
    outputs = list(model.graph.outputs)
    undo: list = []
    owners = _branch_owners(model)
    exposed = {id(v): _expose(v, model, owners, undo) for item in group for v, _ in item.sources}
    values = list({id(v): v for v, _ in exposed.values()}.values())
    added = [v for v in values if v not in outputs]
    model.graph.outputs.extend(added)
    by_feed = hold_out and len(feeds) >= 4
    try:
        with tempfile.TemporaryDirectory(prefix="sparse24-calibration-") as folder:
            session = open_model_session(model, Path(folder) / "calibration.onnx")
            names = [o.name for o in session.get_outputs()]
            last = time.monotonic()
            for index, feed in enumerate(feeds):
                if time.monotonic() - last > 5:
                    last = time.monotonic()
                    log.info("calibration feed %d/%d", index + 1, len(feeds))
                run = dict(zip(names, run_feeds(session, [feed], hint=hint)[0], strict=True))
                held = hold_out and by_feed and index % 4 == 3
                for item in group:
                    for source, (value, layout) in enumerate(item.sources):
                        carried, stacked = exposed[id(value)]
                        _accumulate(
                            item,
                            layout,
                            _unstack(run[carried.name], stacked),
                            hessian,
                            held=held,
                            split_rows=hold_out and not by_feed,
                            feed=index,
                            source=source,
                        )
                del run
                if sum(item.pending_bytes() for item in group) > PENDING_TOTAL_BYTES:
                    for item in group:
                        if item.stats is not None and item.stats.hessian is not None:
                            item.flush()
            for item in group:
                if item.stats is not None and item.stats.hessian is not None:
                    item.flush()
                elif item.stats is None and all(v.graph is not model.graph for v, _ in item.sources):
                    item.stats = LayerStats(
                        0,
                        np.zeros(item.channels),
                        None,
                        no_rows="its If branch (or Loop body) did not run on the calibration feeds",
                    )
            del session
    finally:
        for value in added:
            model.graph.outputs.remove(value)
        for step in reversed(undo):
            step()


def _unstack(array: np.ndarray, stacked: int) -> np.ndarray:
    """An activation a ``Loop`` stacked over its iterations, with the iteration axes merged into the next one
    (the batch): every step's rows, in the layer's own layout."""
    array = np.asarray(array)
    for _ in range(stacked):
        if array.size == 0 or array.ndim < 2:
            return np.zeros((0,), dtype=array.dtype)
        array = array.reshape(-1, *array.shape[2:])
    return array


def _accumulate(
    item: _Input,
    layout: str | ConvPatches,
    activation: np.ndarray,
    hessian: bool,
    *,
    held: bool,
    split_rows: bool,
    feed: int = 0,
    source: int = 0,
) -> None:
    """Add one source's activation on one feed to ``item``'s statistics.

    ``sum of X_j^2`` takes every row; ``X^T X`` a seeded sample of ``item.cap`` rows when the feed has
    more (seeded by feed, source and K), each weighted by rows / sample so that the sum estimates all rows'.
    """
    if np.asarray(activation).size == 0:
        return  # the layer did not run on this feed (an If branch not taken): no rows
    rows = input_rows(activation, layout, dtype=np.float32)
    im2col = hessian and isinstance(layout, ConvPatches) and layout.kernel is not None
    available = layout.positions(np.shape(activation)) if im2col else rows.shape[0]
    sample = None
    if hessian and item.cap and available > item.cap:
        rng = np.random.default_rng([feed, source, item.features])
        sample = np.sort(rng.choice(available, item.cap, replace=False))
    if im2col:
        features = layout.rows(np.asarray(activation, dtype=np.float32), sample)
    else:
        features = rows if sample is None else rows[sample]
    dropped = 0
    if not np.isfinite(rows).all():
        # The model's own activations overflowed on this feed: rows holding NaN or Inf would make every
        # statistic of the layer NaN, so they are left out (and counted, for a warning naming feed and layer).
        finite = np.isfinite(rows).all(axis=1)
        dropped = int((~finite).sum())
        rows = rows[finite]
        features = features[np.isfinite(features).all(axis=1)]
    if sample is not None:
        features *= np.float32(np.sqrt(available / len(sample)))  # a copy already: rows[sample] or patches
    stats = item.stats
    groups = layout.groups if im2col else 1
    if stats is None:
        k = features.shape[1] // groups
        want = hessian and k <= MAX_HESSIAN_K
        why = ""
        if isinstance(layout, ConvPatches) and layout.kernel is None:
            why = layout.why
        elif hessian and not want:
            why = f"K = {k} is above the {MAX_HESSIAN_K} this tool builds X^T X for"
        square = (k, k) if groups == 1 else (groups, k, k)
        stats = item.stats = LayerStats(
            0,
            np.zeros(rows.shape[1]),
            np.zeros(square, np.float32) if want else None,
            im2col=im2col,
            held_out=np.zeros(square, np.float32) if want and (held or split_rows) else None,
            no_hessian=why,
        )
    if dropped:
        stats.non_finite_rows += dropped
        stats.non_finite_feeds.append(feed)
    stats.rows += rows.shape[0]
    stats.sq_norm += np.einsum("nk,nk->k", rows, rows, dtype=np.float64)
    if stats.hessian is None:
        return
    if (held or split_rows) and stats.held_out is None:
        stats.held_out = np.zeros(stats.hessian.shape, np.float32)  # calloc: pages arrive as they are written
    if groups > 1:
        features = layout.by_group(features)  # (groups, rows, K)
    stats.hessian_rows += features.shape[-2]
    stats.hessian_available += features.shape[-2] if sample is None else available
    fit, pending_held = item.pending
    if held:
        pending_held.append(features)
        stats.held_out_rows += features.shape[-2]
    elif split_rows:
        pending_held.append(features[..., 3::4, :])
        fit.append(np.delete(features, np.s_[3::4], axis=-2))
        stats.held_out_rows += pending_held[-1].shape[-2]
    else:
        fit.append(features)
    if item.pending_bytes() >= max(PENDING_BYTES, stats.hessian.nbytes):
        item.flush()


def _spill(item: _Input, folder: Path) -> None:
    """Write an input's matrices to ``folder`` and map them back (read-only), freeing the memory."""
    stats = item.stats
    if stats is None:
        return
    for attribute in ("hessian", "held_out"):
        array = getattr(stats, attribute)
        if array is None:
            continue
        path = folder / f"{id(item)}.{attribute}.npy"
        np.save(path, array)
        setattr(stats, attribute, np.load(path, mmap_mode="r"))


def _sum(parts: list[LayerStats]) -> LayerStats:
    """Statistics of a weight read by several layer inputs: the sums."""
    first = parts[0]
    total = LayerStats(
        sum(p.rows for p in parts),
        sum(p.sq_norm for p in parts),
        None if any(p.hessian is None for p in parts) else sum(np.asarray(p.hessian) for p in parts),
        im2col=first.im2col,
        held_out=None if any(p.held_out is None for p in parts) else sum(np.asarray(p.held_out) for p in parts),
        held_out_rows=sum(p.held_out_rows for p in parts),
        no_hessian=next((p.no_hessian for p in parts if p.no_hessian), ""),
        non_finite_rows=sum(p.non_finite_rows for p in parts),
        non_finite_feeds=sorted({f for p in parts for f in p.non_finite_feeds}),
        hessian_rows=sum(p.hessian_rows for p in parts),
        hessian_available=sum(p.hessian_available for p in parts),
    )
    return total


def permute_stats(stats: LayerStats, perm: np.ndarray) -> LayerStats:
    """The statistics of a layer input whose channels were reordered by ``perm`` (a new object).

    ``sq_norm`` is per channel; ``X^T X`` per feature, which for im2col statistics
    is ``kh * kw`` kernel positions of all channels each, channels fastest.
    """
    perm = np.asarray(perm)
    channels = stats.sq_norm.shape[0]
    order = perm
    if stats.hessian is not None and stats.hessian.shape[0] != channels:
        positions = stats.hessian.shape[0] // channels
        order = (np.arange(positions)[:, None] * channels + perm[None, :]).reshape(-1)
    return stats.subset(order, perm)


def memory_budget(gib: float | None) -> int:
    """Bytes of layer statistics held in memory at once: ``gib``, or a quarter of the machine's memory."""
    import os

    if gib is not None:
        return int(gib * 2**30)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return max(256 << 20, total // 4)
