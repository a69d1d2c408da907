"""The portable reference graph: GPT-2 in standard ONNX operators, written from the weights.

``onnx/model.onnx`` is what any ONNX runtime can run, and the graph every fast variant is
checked against. It used to come from optimum's exporter, which held transformers below 4.58
(optimum-onnx 0.1.0, its only release); writing it ourselves, as the fast graphs already are
(:mod:`training.export.fused_graph`), needs neither an exporter nor a tracer and works with any transformers.
:func:`training.export.reference.export_onnx` checks it against PyTorch before it is installed.

Its inputs and outputs are those of the exporter's decoder with past key values, so folders
exported either way serve alike::

    input_ids (batch, sequence)           logits (batch, sequence, vocab)
    attention_mask (batch, total)         present.{i}.key / .value (batch, heads, total, head_dim)
    position_ids (batch, sequence)
    past_key_values.{i}.key / .value (batch, heads, total - sequence, head_dim)

One layer, in default-domain operators of opset 17 (LayerNormalization is the newest)::

    LayerNormalization ─► MatMul+Add ─► Split ─► Reshape/Transpose per q, k, v
      ─► Concat(past, new) = present ─► MatMul(q, kᵀ)·scale ─► Where(mask) ─► Softmax ─► MatMul(v)
      ─► Transpose/Reshape ─► MatMul+Add ─► Add(residual) ─► LayerNormalization ─► MatMul+Add
      ─► GELU (tanh or erf form, in plain arithmetic) ─► MatMul+Add ─► Add(residual)

The mask (a query sees the keys at or before its own position whose ``attention_mask`` is 1) is
computed once for all layers. The LM head is a Gemm against the token embedding (``transB``), so
a tied head is stored once.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

from chatbot.fused import past_names, present_names
from training.export.fused_graph import Gpt2Config, _GraphWriter

if TYPE_CHECKING:
    import onnx

OPSET = 17
BUILDER = "chatbot.training.portable"
DATA_FILE = "model.onnx_data"  # the exporter's name for weights stored beside the graph
EXTERNAL_DATA_BYTES = 1 << 30  # protobuf stops at 2 GiB; past 1 GiB the weights go beside


def build_reference(config: Gpt2Config, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The GPT-2 decoder with past key values in standard operators (see the module docstring)."""
    return _Reference(config, weights).model()


def save_reference(
    model: onnx.ModelProto, path: str | os.PathLike[str], *, external_above: int = EXTERNAL_DATA_BYTES
) -> None:
    """Save ``model`` at ``path``; weights over ``external_above`` bytes (1 GiB) go to
    ``model.onnx_data`` beside it."""
    import onnx

    large = model.ByteSize() > external_above
    onnx.save(model, str(path), save_as_external_data=large, all_tensors_to_one_file=True, location=DATA_FILE)


class _Reference:
    """Writes the reference decoder node by node from ``weights`` (GPT-2's safetensors keys)."""

    def __init__(self, config: Gpt2Config, weights: dict[str, np.ndarray]) -> None:
        self.config = config
        self.weights = weights
        self.w = _GraphWriter("fp32")
        self.w.opset = OPSET

    def model(self) -> onnx.ModelProto:
        from onnx import TensorProto, helper

        config, w, weights = self.config, self.w, self.weights
        heads, dim = config.n_head, config.head_dim
        float32, int64 = TensorProto.FLOAT, TensorProto.INT64
        inputs = [
            helper.make_tensor_value_info("input_ids", int64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", int64, ["batch", "total"]),
            helper.make_tensor_value_info("position_ids", int64, ["batch", "sequence"]),
        ]
        outputs = [helper.make_tensor_value_info("logits", float32, ["batch", "sequence", config.vocab_size])]
        for past, present in zip(past_names(config.n_layer), present_names(config.n_layer), strict=True):
            inputs.append(helper.make_tensor_value_info(past, float32, ["batch", heads, "past", dim]))
            outputs.append(helper.make_tensor_value_info(present, float32, ["batch", heads, "total", dim]))

        self.constants()
        self.mask()
        wte = w.floats("wte", weights["wte.weight"])
        w.node("Gather", [wte, "input_ids"], ["tokens"])
        w.node("Gather", [w.floats("wpe", weights["wpe.weight"]), "position_ids"], ["positions"])
        w.node("Add", ["tokens", "positions"], ["h0"])
        stream = "h0"
        for i in range(config.n_layer):
            stream = self.layer(i, stream)
        self.layer_norm(stream, "ln_f", "final")
        self.lm_head(wte)
        graph = helper.make_graph(w.nodes, "gpt2_reference", inputs, outputs, w.initializers)
        opsets = [helper.make_opsetid("", OPSET)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name=BUILDER)
        model.ir_version = min(model.ir_version, 10)  # what ONNX Runtime 1.20 (our oldest) reads
        return model

    def constants(self) -> None:
        """The small tensors every layer shares."""
        config, w = self.config, self.w
        w.constant("split_qkv", np.array([config.n_embd] * 3, dtype=np.int64))
        w.constant("heads_shape", np.array([0, 0, config.n_head, config.head_dim], dtype=np.int64))
        w.constant("embd_shape", np.array([0, 0, config.n_embd], dtype=np.int64))
        w.constant("masked", np.array(np.finfo(np.float32).min, dtype=np.float32))
        w.constant("half", np.array(0.5, dtype=np.float32))
        w.constant("one", np.array(1.0, dtype=np.float32))
        if config.activation == "Gelu":
            w.constant("inv_sqrt2", np.array(1 / math.sqrt(2), dtype=np.float32))
        else:
            w.constant("gelu_cubic", np.array(0.044715, dtype=np.float32))
            w.constant("gelu_scale", np.array(math.sqrt(2 / math.pi), dtype=np.float32))

    def mask(self) -> None:
        """``allowed`` (batch, 1, sequence, total): key j is visible to the query at position p
        when j <= p and ``attention_mask[j]`` is 1 (the new tokens follow ``total - sequence``
        cached ones)."""
        w = self.w
        zero = w.constant("zero_i64", np.array(0, dtype=np.int64))
        step = w.constant("one_i64", np.array(1, dtype=np.int64))
        w.node("Shape", ["attention_mask"], ["total_1d"], start=1, end=2)
        w.node("Shape", ["input_ids"], ["sequence_1d"], start=1, end=2)
        w.node("Sub", ["total_1d", "sequence_1d"], ["past_1d"])
        w.node("Squeeze", ["total_1d"], ["total"])
        w.node("Squeeze", ["past_1d"], ["past"])
        w.node("Range", [zero, "total", step], ["key_positions"])
        w.node("Range", ["past", "total", step], ["query_positions"])
        rows = w.constant("axis_0", np.array([0], dtype=np.int64))
        columns = w.constant("axis_1", np.array([1], dtype=np.int64))
        w.node("Unsqueeze", ["key_positions", rows], ["key_row"])  # (1, total)
        w.node("Unsqueeze", ["query_positions", columns], ["query_column"])  # (sequence, 1)
        w.node("LessOrEqual", ["key_row", "query_column"], ["causal"])  # (sequence, total)
        w.node("Cast", ["attention_mask"], ["attended"], to=9)  # BOOL
        middle = w.constant("axes_1_2", np.array([1, 2], dtype=np.int64))
        w.node("Unsqueeze", ["attended", middle], ["attended_4d"])  # (batch, 1, 1, total)
        w.node("And", ["causal", "attended_4d"], ["allowed"])

    def layer(self, i: int, stream: str) -> str:
        """Block ``i`` on the residual ``stream``; returns the stream after it."""
        config, w, weights, p = self.config, self.w, self.weights, f"h.{i}."
        normed = self.layer_norm(stream, p + "ln_1", f"l{i}.ln_1")
        w.matmul(normed, weights[p + "attn.c_attn.weight"], weights[p + "attn.c_attn.bias"], f"l{i}.qkv")
        q, k, v = (f"l{i}.{name}" for name in "qkv")
        w.node("Split", [f"l{i}.qkv", "split_qkv"], [q, k, v], axis=2)
        for name in (q, k, v):
            w.node("Reshape", [name, "heads_shape"], [name + ".split"])
            w.node("Transpose", [name + ".split"], [name + ".heads"], perm=[0, 2, 1, 3])
        past_k, past_v = past_names(config.n_layer)[2 * i : 2 * i + 2]
        present_k, present_v = present_names(config.n_layer)[2 * i : 2 * i + 2]
        w.node("Concat", [past_k, k + ".heads"], [present_k], axis=2)
        w.node("Concat", [past_v, v + ".heads"], [present_v], axis=2)
        w.node("Transpose", [present_k], [k + ".t"], perm=[0, 1, 3, 2])
        w.node("MatMul", [q + ".heads", k + ".t"], [f"l{i}.dot"])
        scale = w.constant(f"l{i}.scale", np.array(config.layer_scales[i], dtype=np.float32))
        w.node("Mul", [f"l{i}.dot", scale], [f"l{i}.scores"])
        w.node("Where", ["allowed", f"l{i}.scores", "masked"], [f"l{i}.visible"])
        w.node("Softmax", [f"l{i}.visible"], [f"l{i}.weights"], axis=-1)
        w.node("MatMul", [f"l{i}.weights", present_v], [f"l{i}.context"])
        w.node("Transpose", [f"l{i}.context"], [f"l{i}.context.t"], perm=[0, 2, 1, 3])
        w.node("Reshape", [f"l{i}.context.t", "embd_shape"], [f"l{i}.attn"])
        w.matmul(f"l{i}.attn", weights[p + "attn.c_proj.weight"], weights[p + "attn.c_proj.bias"], f"l{i}.ao")
        w.node("Add", [stream, f"l{i}.ao"], [f"l{i}.mid"])
        normed = self.layer_norm(f"l{i}.mid", p + "ln_2", f"l{i}.ln_2")
        w.matmul(normed, weights[p + "mlp.c_fc.weight"], weights[p + "mlp.c_fc.bias"], f"l{i}.fc")
        self.gelu(f"l{i}.fc", f"l{i}.act")
        w.matmul(f"l{i}.act", weights[p + "mlp.c_proj.weight"], weights[p + "mlp.c_proj.bias"], f"l{i}.mlp")
        w.node("Add", [f"l{i}.mid", f"l{i}.mlp"], [f"h{i + 1}"])
        return f"h{i + 1}"

    def layer_norm(self, x: str, norm: str, out: str) -> str:
        w, weights = self.w, self.weights
        gamma = w.floats(norm + ".weight", weights[norm + ".weight"])
        beta = w.floats(norm + ".bias", weights[norm + ".bias"])
        w.node("LayerNormalization", [x, gamma, beta], [out], axis=-1, epsilon=self.config.epsilon)
        return out

    def gelu(self, x: str, out: str) -> None:
        """GPT-2's activation in plain arithmetic: the tanh form (``gelu_new``, FastGelu in the fast
        graphs) or the erf form (``gelu``)."""
        w = self.w
        if self.config.activation == "Gelu":  # 0.5·x·(1 + erf(x/√2))
            w.node("Mul", [x, "inv_sqrt2"], [x + ".scaled"])
            w.node("Erf", [x + ".scaled"], [x + ".curve"])
        else:  # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
            w.node("Mul", [x, x], [x + ".sq"])
            w.node("Mul", [x + ".sq", x], [x + ".cube"])
            w.node("Mul", [x + ".cube", "gelu_cubic"], [x + ".cubic"])
            w.node("Add", [x, x + ".cubic"], [x + ".inner"])
            w.node("Mul", [x + ".inner", "gelu_scale"], [x + ".scaled"])
            w.node("Tanh", [x + ".scaled"], [x + ".curve"])
        w.node("Add", [x + ".curve", "one"], [x + ".gate"])
        w.node("Mul", [x, x + ".gate"], [x + ".gated"])
        w.node("Mul", [x + ".gated", "half"], [out])

    def lm_head(self, wte: str) -> None:
        """``logits = final @ headᵀ`` with a Gemm on (batch·sequence, embd) rows; a tied head
        reuses the token embedding's initializer."""
        w, weights = self.w, self.weights
        head = wte
        if "lm_head.weight" in weights and not np.array_equal(
            weights["lm_head.weight"], weights["wte.weight"]
        ):
            head = w.floats("lm_head", weights["lm_head.weight"])
        w.constant("rows_shape", np.array([-1, self.config.n_embd], dtype=np.int64))
        w.node("Reshape", ["final", "rows_shape"], ["final_rows"])
        w.node("Gemm", ["final_rows", head], ["logit_rows"], transB=1)
        w.node("Shape", ["input_ids"], ["ids_shape"])
        w.constant("vocab_1d", np.array([self.config.vocab_size], dtype=np.int64))
        w.node("Concat", ["ids_shape", "vocab_1d"], ["logits_shape"], axis=0)
        w.node("Reshape", ["logit_rows", "logits_shape"], ["logits"])
