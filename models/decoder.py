"""Build Llama-shaped decoder ONNX models without downloading anything: ``python models/decoder.py OUT.onnx``.

The graph is what exporters write for a Llama decoder (``optimum``'s and
``torch.onnx``'s layout, standard ONNX operators only, opset 17):

* inputs ``input_ids [batch_size, sequence_length]`` (int64), ``attention_mask
  [batch_size, total_sequence_length]`` (int64) and, with a KV cache,
  ``past_key_values.N.key`` / ``.value`` ``[batch_size, kv_heads, past_sequence_length,
  head_dim]``; outputs ``logits`` and, with a cache, ``present.N.key`` / ``.value``;
* per layer: RMSNorm, q/k/v projections (MatMul), rotary position embeddings
  (positions ``past_sequence_length ...``), grouped-query attention (query heads
  grouped by key/value head), causal and padding masks, o projection, residual,
  RMSNorm, a SiLU-gated MLP (gate, up, down), residual; then a final RMSNorm and
  the ``lm_head`` MatMul.

Weights are random (seeded), scaled so activations keep unit size.  Sizes up to
TinyLlama-1.1B's (22 layers, hidden 2048, FFN 5632, 32 query / 4 key-value heads,
vocabulary 32000); large models are written with external data.  ``--fp16``
stores every weight and computes in float16 (as fp16 exports do).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["TINYLLAMA", "DecoderConfig", "build_decoder", "save_decoder"]


@dataclass(frozen=True)
class DecoderConfig:
    """Sizes of a Llama-shaped decoder."""

    layers: int = 2
    hidden: int = 256
    ffn: int = 704
    heads: int = 8
    kv_heads: int = 2
    vocab: int = 1024
    max_positions: int = 2048
    cache: bool = True
    fp16: bool = False
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def parameters(self) -> int:
        attention = self.hidden * (2 * self.hidden + 2 * self.kv_heads * self.head_dim)
        per_layer = attention + 3 * self.hidden * self.ffn
        return self.layers * per_layer + 2 * self.vocab * self.hidden


#: TinyLlama-1.1B's shape.
TINYLLAMA = DecoderConfig(layers=22, hidden=2048, ffn=5632, heads=32, kv_heads=4, vocab=32000, max_positions=2048)


class _Graph:
    """Collects nodes and initializers, with unique names."""

    def __init__(self, config: DecoderConfig) -> None:
        self.config = config
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0
        self.rng = np.random.default_rng(config.seed)
        self.float = np.float16 if config.fp16 else np.float32
        self.float_type = TensorProto.FLOAT16 if config.fp16 else TensorProto.FLOAT

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attributes) -> str:
        self.count += 1
        output = name or f"/{op_type}_{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=f"{output}/{op_type}", **attributes))
        return output

    def const(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], scale: float | None = None) -> str:
        scale = 1.0 / np.sqrt(shape[0]) if scale is None else scale
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(self.float))

    def scalar(self, name: str, value: float) -> str:
        return self.const(name, np.array(value, dtype=self.float))

    def ints(self, name: str, values: list[int]) -> str:
        return self.const(name, np.array(values, dtype=np.int64))


def _rms_norm(g: _Graph, x: str, prefix: str) -> str:
    gamma = g.const(f"{prefix}.weight", np.ones(g.config.hidden, dtype=g.float))
    square = g.op("Mul", [x, x])
    mean = g.op("ReduceMean", [square], axes=[-1], keepdims=1)
    root = g.op("Sqrt", [g.op("Add", [mean, "const.eps"])])
    return g.op("Mul", [g.op("Div", [x, root]), gamma])


def _rotate(g: _Graph, x: str, cos: str, sin: str) -> str:
    """``x * cos + rotate_half(x) * sin`` over the last axis (head_dim)."""
    half = g.config.head_dim // 2
    first = g.op("Slice", [x, "const.zero1", g.ints(f"const.half{g.count}", [half]), "const.minus1"])
    second = g.op("Slice", [x, g.ints(f"const.half_start{g.count}", [half]), "const.big1", "const.minus1"])
    rotated = g.op("Concat", [g.op("Neg", [second]), first], axis=-1)
    return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])])


def _layer(g: _Graph, i: int, x: str, cos: str, sin: str, mask: str, past: tuple[str, str] | None) -> tuple:
    c = g.config
    p = f"model.layers.{i}"
    h = _rms_norm(g, x, f"{p}.input_layernorm")
    q = g.op("MatMul", [h, g.weight(f"{p}.self_attn.q_proj.weight", (c.hidden, c.heads * c.head_dim))])
    k = g.op("MatMul", [h, g.weight(f"{p}.self_attn.k_proj.weight", (c.hidden, c.kv_heads * c.head_dim))])
    v = g.op("MatMul", [h, g.weight(f"{p}.self_attn.v_proj.weight", (c.hidden, c.kv_heads * c.head_dim))])
    heads = g.ints(f"{p}.q_shape", [0, 0, c.heads, c.head_dim])
    kv_shape = g.ints(f"{p}.kv_shape", [0, 0, c.kv_heads, c.head_dim])
    q = g.op("Transpose", [g.op("Reshape", [q, heads])], perm=[0, 2, 1, 3])  # [B, nh, S, hd]
    k = g.op("Transpose", [g.op("Reshape", [k, kv_shape])], perm=[0, 2, 1, 3])  # [B, nkv, S, hd]
    v = g.op("Transpose", [g.op("Reshape", [v, kv_shape])], perm=[0, 2, 1, 3])
    q, k = _rotate(g, q, cos, sin), _rotate(g, k, cos, sin)
    present = None
    if past is not None:
        k = g.op("Concat", [past[0], k], name=f"present.{i}.key", axis=2)
        v = g.op("Concat", [past[1], v], name=f"present.{i}.value", axis=2)
        present = (k, v)
    grouped = g.op("Reshape", [q, g.ints(f"{p}.grouped", [0, c.kv_heads, -1, c.head_dim])])  # [B, nkv, g*S, hd]
    scores = g.op("MatMul", [grouped, g.op("Transpose", [k], perm=[0, 1, 3, 2])])  # [B, nkv, g*S, T]
    scores = g.op("Reshape", [scores, g.ints(f"{p}.scores", [0, c.heads, -1, 0])])  # [B, nh, S, T]
    scores = g.op("Add", [g.op("Mul", [scores, "const.scale"]), mask])
    attention = g.op("Softmax", [scores], axis=-1)
    attention = g.op("Reshape", [attention, g.ints(f"{p}.attn_grouped", [0, c.kv_heads, -1, 0])])
    context = g.op("MatMul", [attention, v])  # [B, nkv, g*S, hd]
    context = g.op("Reshape", [context, g.ints(f"{p}.context", [0, c.heads, -1, c.head_dim])])
    context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), g.ints(f"{p}.merge", [0, 0, -1])])
    out = g.op("MatMul", [context, g.weight(f"{p}.self_attn.o_proj.weight", (c.hidden, c.hidden))])
    x = g.op("Add", [x, out])
    h = _rms_norm(g, x, f"{p}.post_attention_layernorm")
    gate = g.op("MatMul", [h, g.weight(f"{p}.mlp.gate_proj.weight", (c.hidden, c.ffn))])
    up = g.op("MatMul", [h, g.weight(f"{p}.mlp.up_proj.weight", (c.hidden, c.ffn))])
    act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
    down = g.op("MatMul", [act, g.weight(f"{p}.mlp.down_proj.weight", (c.ffn, c.hidden))])
    return g.op("Add", [x, down]), present


def build_decoder(config: DecoderConfig = DecoderConfig()) -> onnx.ModelProto:
    """The decoder as a ModelProto (weights in memory; see :func:`save_decoder` for large ones)."""
    c = config
    g = _Graph(c)
    g.scalar("const.eps", 1e-5)
    g.scalar("const.scale", 1.0 / np.sqrt(c.head_dim))
    g.scalar("const.masked", -10000.0)
    g.scalar("const.one", 1.0)
    g.ints("const.zero1", [0])
    g.ints("const.minus1", [-1])
    g.ints("const.big1", [2**31 - 1])
    float_type = g.float_type
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", float_type, ["batch_size", "sequence_length", c.vocab])]
    cache_shape = ["batch_size", c.kv_heads, "past_sequence_length", c.head_dim]
    if c.cache:
        for i in range(c.layers):
            for kind in ("key", "value"):
                inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", float_type, cache_shape))
                outputs.append(
                    helper.make_tensor_value_info(
                        f"present.{i}.{kind}",
                        float_type,
                        ["batch_size", c.kv_heads, "total_sequence_length", c.head_dim],
                    )
                )
    # Positions past .. past + S - 1; the total length T = past + S.
    ids_shape = g.op("Shape", ["input_ids"])
    seq = g.op("Gather", [ids_shape, g.ints("const.index1", [1])], axis=0)
    if c.cache:
        past_len = g.op("Gather", [g.op("Shape", ["past_key_values.0.key"]), g.ints("const.two", [2])], axis=0)
    else:
        past_len = g.ints("const.zero_len", [0])
    total = g.op("Add", [past_len, seq])
    positions = g.op("Range", [g.op("Squeeze", [past_len]), g.op("Squeeze", [total]), g.ints("const.step", 1)])
    inv = 1.0 / (10000 ** (np.arange(0, c.head_dim, 2) / c.head_dim))
    angles = np.outer(np.arange(c.max_positions), inv)
    angles = np.concatenate([angles, angles], axis=1)
    cos = g.op("Gather", [g.const("rotary.cos", np.cos(angles).astype(g.float)), positions], axis=0)  # [S, hd]
    sin = g.op("Gather", [g.const("rotary.sin", np.sin(angles).astype(g.float)), positions], axis=0)
    # Masks: causal [S, T] (key j visible from query i when j <= past + i) plus padding [B, 1, 1, T].
    columns = g.op("Range", [g.ints("const.start", 0), g.op("Squeeze", [total]), g.ints("const.step1", 1)])
    rows = g.op("Unsqueeze", [positions, "const.minus1"])
    visible = g.op("LessOrEqual", [columns, rows])  # [S, T]
    causal = g.op("Where", [visible, g.scalar("const.zero", 0.0), "const.masked"])
    padding = g.op("Cast", ["attention_mask"], to=float_type)
    padding = g.op("Mul", [g.op("Sub", ["const.one", padding]), "const.masked"])
    padding = g.op("Unsqueeze", [padding, g.ints("const.axes12", [1, 2])])
    mask = g.op("Add", [causal, padding])
    x = g.op("Gather", [g.weight("model.embed_tokens.weight", (c.vocab, c.hidden), scale=1.0), "input_ids"], axis=0)
    for i in range(c.layers):
        past = (f"past_key_values.{i}.key", f"past_key_values.{i}.value") if c.cache else None
        x, _ = _layer(g, i, x, cos, sin, mask, past)
    x = _rms_norm(g, x, "model.norm")
    g.op("MatMul", [x, g.weight("lm_head.weight", (c.hidden, c.vocab))], name="logits")
    graph = helper.make_graph(g.nodes, "llama_decoder", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="sparse24-models")
    model.ir_version = 8
    return model


def save_decoder(config: DecoderConfig, path: str | Path, *, external_data: bool | None = None) -> Path:
    """Write a decoder to ``path``; with external data (``path.data``) when asked or over 1 GiB of weights."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_decoder(config)
    size = sum(len(t.raw_data) for t in model.graph.initializer)
    external = size > (1 << 30) if external_data is None else external_data
    if external:
        onnx.save(model, path, save_as_external_data=True, location=path.name + ".data", size_threshold=1024)
    else:
        onnx.checker.check_model(model)
        onnx.save(model, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--tinyllama", action="store_true", help="TinyLlama-1.1B's shape (22 x 2048, FFN 5632)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=704)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--no-cache", action="store_true", help="no past_key_values inputs")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and compute")
    parser.add_argument("--external-data", action="store_true")
    args = parser.parse_args(argv)
    if args.tinyllama:
        config = DecoderConfig(**{**TINYLLAMA.__dict__, "cache": not args.no_cache, "fp16": args.fp16})
    else:
        config = DecoderConfig(
            args.layers, args.hidden, args.ffn, args.heads, args.kv_heads, args.vocab,
            cache=not args.no_cache, fp16=args.fp16,
        )  # fmt: skip
    path = save_decoder(config, args.output, external_data=args.external_data or None)
    print(f"{path}: {config.parameters / 1e6:.1f} M parameters")


if __name__ == "__main__":
    sys.exit(main())
