"""Pass: permute channels so that 2:4 pruning keeps more of each weight, without changing the model.

For a consumer weight ``W2`` pruned along its reduction axis (the channels of
its input ``h``), the channels of ``h`` can be reordered if the layer that
produces ``h`` is reordered the same way: its weight's output axis, its bias,
and every per-channel constant between the two (a bias ``Add``, a
``BatchNormalization``, a channel-wise ``Mul``), with only element-wise ops on
the way.  The model then computes exactly the same function (up to the order
of floating-point sums), but the groups of 4 that ``W2``'s pruning sees are
chosen by :func:`~sparse24_onnx.core.permutation.search_permutation` to keep
more of ``|W2|``.

Chains handled: ``MatMul -> ... -> MatMul`` (transformer FFN), ``Gemm -> ... ->
Gemm`` and ``Conv -> [BatchNormalization] -> ... -> Conv``, where the middle may
also hold depthwise convolutions (one filter per channel, as in MobileNet-style
blocks: they reorder with the channels); anything else is left as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from ..core.permutation import search_permutation
from .base import NeedsWeights, PassResult
from .op_rules import data_operand, output_channel_operands
from .weights import ConstantNodeSource, InitializerSource, Status, WeightRecord, weight_records

__all__ = ["PermuteChannels"]

#: One input, one output, element i of the output a function of element i of the input.
_UNARY = frozenset(
    {
        "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish",
        "Tanh", "Softplus", "Softsign", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Identity", "Cast",
        "Mish", "ThresholdedRelu", "Clip", "Reciprocal", "Floor", "Ceil", "Round", "Sign",
    }
)  # fmt: skip
#: Element-wise with broadcasting: fine when every other input is in the chain or a constant.
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum"})


@dataclass
class _Chain:
    """A producer layer, the element-wise region after it, and the consumer weight."""

    consumer: WeightRecord
    producer: ir.Node
    channels: int
    # (tensor holder, axis to permute) for every constant that carries the channel axis
    moves: list[tuple[InitializerSource | ConstantNodeSource, int]] = field(default_factory=list)
    # Per channel, the size of the consumer's input as a BatchNormalization on the way sets it, if any
    channel_scale: np.ndarray | None = None


def _holder(value: ir.Value) -> InitializerSource | ConstantNodeSource | None:
    if value.const_value is not None and value.is_initializer() and not value.is_graph_input():
        return InitializerSource(value)
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return ConstantNodeSource(producer)
    return None


def _only_used_by(value: ir.Value, nodes: set[int]) -> bool:
    return not value.is_graph_output() and all(id(node) in nodes for node, _ in value.uses())


def _data_input(node: ir.Node, index: int, record: WeightRecord) -> tuple[ir.Value, int] | None:
    """The consumer's data input and its channel axis (``-1`` = last), if the chain can end here: a 2-D
    weight read as ``X @ W`` (MatMul, Gemm without ``transA``) or an ungrouped Conv."""
    found = data_operand(node, index)
    if found is None:
        return None
    value, layout = found
    if layout == "last" and (node.op_type == "Gemm" or len(record.shape) == 2):
        return value, -1
    if layout == "channels" and node.attributes.get_int("group", 1) == 1:
        return value, 1
    return None


def _producer_moves(node: ir.Node) -> list[tuple[ir.Value, int]] | None:
    """The producer layer's tensors that carry its output channels, with the axis; None if not such a layer
    (or a MatMul whose second operand is no constant)."""
    moves = output_channel_operands(node)
    if moves and node.op_type == "MatMul":
        weight = moves[0][0]
        if weight.const_value is None and _holder(weight) is None:
            return None
    return moves


def _depthwise(node: ir.Node, channels: int) -> bool:
    """A depthwise Conv over exactly these channels (group = channels, one input channel per filter)."""
    if node.op_type != "Conv" or len(node.inputs) < 2 or node.inputs[1] is None:
        return False
    weight = node.inputs[1]
    holder = _holder(weight)
    if holder is None:
        return False
    shape = tuple(int(d) for d in holder.tensor.shape)
    return node.attributes.get_int("group", 1) == channels and len(shape) >= 3 and shape[:2] == (channels, 1)


def _channel_axis_of_constant(shape: tuple[int, ...], data_rank: int, channel_axis: int) -> int | None:
    """Which axis of a broadcast constant lines up with the data's channel axis (None: none does)."""
    absolute = channel_axis % data_rank
    axis = absolute - (data_rank - len(shape))
    return axis if axis >= 0 else None


def find_chain(record: WeightRecord) -> _Chain | None:
    """The permutable chain that ends at ``record``'s weight, or None."""
    source = record.source
    if source is None or record.axis is None or len(record.uses) != 1 or record.uses[0].via:
        return None
    uses = list(source.value.uses())
    if len(uses) != 1:
        return None
    consumer, index = uses[0]
    found = _data_input(consumer, index, record)
    if found is None:
        return None
    data, channel_axis = found
    channels = record.shape[record.axis]
    known = data.shape is not None and len(data.shape) > 0
    data_rank = len(data.shape) if known else (2 if channel_axis == -1 else 4)
    region: set[int] = {id(consumer)}
    region_values = [data]
    moves: list[tuple[ir.Value, int]] = []
    producer = None
    pending = [data]
    batch_norms: list[ir.Node] = []
    seen: set[int] = set()
    while pending:
        value = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        node = value.producer()
        if node is None:
            return None
        layer = _producer_moves(node)
        if layer is not None and node.op_type == consumer.op_type:
            if producer is not None and producer is not node:
                return None
            producer = node
            region.add(id(node))
            region_values.extend(node.outputs)
            moves.extend(layer)
            continue
        if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            return None
        region.add(id(node))
        region_values.extend(node.outputs)
        if _depthwise(node, channels):  # one filter per channel: reorders with the channels
            moves.append((node.inputs[1], 0))
            if len(node.inputs) > 2 and node.inputs[2] is not None:
                moves.append((node.inputs[2], 0))
            pending.append(node.inputs[0])
        elif node.op_type == "BatchNormalization":
            if len(node.inputs) != 5 or any(i is None for i in node.inputs):
                return None
            moves.extend((i, 0) for i in node.inputs[1:])
            pending.append(node.inputs[0])
            batch_norms.append(node)
        elif node.op_type in _UNARY:
            pending.append(node.inputs[0])
            for extra in node.inputs[1:]:  # Clip min/max, PRelu slope: constants, maybe per channel
                if extra is not None:
                    if _holder(extra) is None and extra.const_value is None:
                        return None
                    moves.append((extra, None))
        elif node.op_type in _BINARY:
            for operand in node.inputs:
                if operand is None:
                    continue
                if _holder(operand) is not None or operand.const_value is not None:
                    moves.append((operand, None))
                else:
                    pending.append(operand)
        else:
            return None
    if producer is None:
        return None
    # Every value of the region must stay inside it (the data only feeds the consumer).
    if not all(_only_used_by(v, region) for v in region_values):
        return None
    chain = _Chain(record, producer, channels, channel_scale=_batch_norm_scale(batch_norms, channels))
    for value, axis in moves:
        holder = _holder(value)
        if holder is None:
            return None
        shape = tuple(int(d) for d in holder.tensor.shape)
        if axis is None:  # a constant operand of an element-wise op: broadcast along the channel axis?
            axis = _channel_axis_of_constant(shape, data_rank, channel_axis)
            if axis is None or shape[axis] == 1:
                continue
        if not shape or int(np.prod(shape)) == 1:
            continue  # a scalar (a Gemm's scalar C, say) is the same for every channel
        axis = axis % len(shape)
        if shape[axis] != channels:
            return None
        if not _only_used_by(holder.value, region):
            return None  # shared with other layers: reordering it would change them
        chain.moves.append((holder, axis))
    return chain


def _batch_norm_scale(nodes: list[ir.Node], channels: int) -> np.ndarray | None:
    """The root mean square of a BatchNormalization's output per channel: ``sqrt(gamma^2 + beta^2)``.

    The normalised input has mean 0 and variance 1 per channel, so after the BN a
    channel's values have mean ``beta`` and spread ``|gamma|``: this is how large
    the next layer's inputs are, known from the graph alone.
    """
    if len(nodes) != 1:
        return None
    holders = [_holder(nodes[0].inputs[i]) for i in (1, 2)]
    if any(h is None for h in holders):
        return None
    gamma, beta = (np.asarray(h.tensor.numpy(), dtype=np.float64).reshape(-1) for h in holders)
    if gamma.size != channels or beta.size != channels:
        return None
    return np.sqrt(gamma**2 + beta**2)


#: ``importance(record, weights)``: per-element importance of a consumer's weights, or None for |w|.
Importance = Callable[[WeightRecord, np.ndarray], "np.ndarray | None"]


class PermuteChannels(NeedsWeights):
    """Reorder the channels between layer pairs so that 2:4 pruning keeps more magnitude.

    Runs after :class:`FindWeights` and before :class:`PruneWeights`.  For every
    candidate weight at the end of a chain (see the module docstring) it
    searches an order that raises the magnitude its 2:4 pruning keeps, and if
    one is found applies it to the whole chain.  The record's ``permutation``
    says, as fractions of the weight's total ``|w|``, what 2:4 would keep before
    and after.

    What is kept is scored by ``importance`` when given (the calibrated
    ``|w_ij| * ||x_j||`` of the unpermuted model's statistics), else by what the
    graph knows (a BatchNormalization before the consumer gives each channel's
    size), else by ``|w|``.  Each applied permutation is remembered, so that a
    caller who finds a layer worse for it can :meth:`undo` it.

    Args:
        seconds: Time cap for all searches together, shared equally; a search
            cut by it is marked ``"stopped": "time"`` in ``record.permutation``.
        seed: Seed of the search.
        importance: Per-element importance of a consumer's weights (None: see above).
        permuted: Called with ``(record, perm)`` after a chain is permuted (and again
            with the inverse on :meth:`undo`), to keep per-channel statistics in step.
    """

    def __init__(
        self,
        seconds: float = 60.0,
        seed: int = 0,
        *,
        importance: Importance | None = None,
        permuted: Callable[[WeightRecord, np.ndarray], None] | None = None,
    ) -> None:
        self.seconds = seconds
        self.seed = seed
        self.importance = importance
        self.permuted = permuted
        self.applied: dict[str, tuple[_Chain, np.ndarray]] = {}

    def _scores(self, chain: _Chain, weights: np.ndarray) -> tuple[np.ndarray, str]:
        record = chain.consumer
        magnitude = np.abs(weights.astype(np.float32))
        found = self.importance(record, weights) if self.importance is not None else None
        if found is not None:
            return np.asarray(found, dtype=np.float32), "calibrated |w|*||x||"
        if chain.channel_scale is not None:
            shape = [1] * weights.ndim
            shape[record.axis] = chain.channels
            return magnitude * chain.channel_scale.reshape(shape).astype(np.float32), "|w| * BatchNormalization scale"
        return magnitude, "|w|"

    def undo(self, record: WeightRecord) -> tuple[_Chain, np.ndarray]:
        """Put a permuted chain back in its original order; returns what :meth:`redo` needs."""
        chain, perm = self.applied.pop(record.name)
        self._apply(chain, np.argsort(perm))
        return chain, perm

    def redo(self, chain: _Chain, perm: np.ndarray) -> None:
        """Apply a permutation that :meth:`undo` took back."""
        self._apply(chain, perm)
        self.applied[chain.consumer.name] = (chain, perm)

    def _apply(self, chain: _Chain, perm: np.ndarray) -> None:
        record = chain.consumer
        for holder, axis in [(record.source, record.axis), *chain.moves]:
            _permute(holder, axis, perm)
        if self.permuted is not None:
            self.permuted(record, perm)

    def call(self, model: ir.Model) -> PassResult:
        chains = []
        for record in weight_records(model):
            if record.status == Status.CANDIDATE:
                chain = find_chain(record)
                if chain is not None:
                    chains.append(chain)
        changed = []
        for chain in chains:
            record = chain.consumer
            weights = record.source.tensor.numpy()
            scores, scored_by = self._scores(chain, weights)
            moved = np.moveaxis(scores, record.axis, 0)
            importance = moved.reshape(moved.shape[0], -1)
            result = search_permutation(importance, seconds=self.seconds / len(chains), seed=self.seed)
            record.permutation = {
                "producer": chain.producer.name or "",
                "importance": scored_by,
                "retained_before": result.before / result.total if result.total else 0.0,
                "retained_after": result.after / result.total if result.total else 0.0,
                "sweeps": result.sweeps,
                "stopped": result.stopped,
            }
            if result.after <= result.before:
                continue
            self.redo(chain, result.perm)
            changed.append(record)
        return PassResult(model, modified=bool(changed), weights=changed)


def _permute(holder: InitializerSource | ConstantNodeSource, axis: int, perm: np.ndarray) -> None:
    tensor = holder.tensor
    array = np.take(tensor.numpy(), perm, axis=axis)
    holder.replace(
        ir.Tensor(
            array,
            dtype=tensor.dtype,
            name=tensor.name,
            doc_string=tensor.doc_string,
            metadata_props=dict(tensor.metadata_props) or None,
        )
    )
