"""Write fast ONNX graphs for a GPT-2 model folder directly from its weights.

The reference export (``onnx/model.onnx``, :mod:`training.export.standard_graph`) stays the portable
reference. The graphs built here do the same arithmetic in fused operators over a fixed-size
cache (README, "Fast graphs" and "Speed", says why that matters), one layer being::

    SkipLayerNormalization ─► MatMul(+bias) ─► GroupQueryAttention ─► MatMul
      ─► SkipLayerNormalization(+bias) ─► MatMul ─► FastGelu(+bias) ─► MatMul ─► (next layer)

* the KV cache is a fixed-size buffer per layer, (batch, heads, max_length, head_dim), that
  GroupQueryAttention reads as ``past_key_values.*`` and writes in place as ``present.*`` when
  both are bound to the same memory; ``seqlens_k`` (total length - 1 per row) says where each
  row ends, so rows of one batch may have different lengths;
* the LM head runs on the last position only, with its own (untied) weight, and the graph
  picks the greedy token itself (``next_token``) beside the ``logits`` needed for sampling; a
  step that verifies drafted tokens asks for its last ``-score_from`` positions instead
  and reads the greedy pick after each (``greedy_tokens``);
* ``int8``: every MatMul is a MatMulIntegerToFloat over int8 weights with one scale per output column,
  its input quantised row by row in the graph (a blocked QuantizeLinear, so opset 21), so a
  row's result never depends on its batch (the embedding tables stay float: a Gather reads one
  row of them); the weights' range fits the CPU's int8 instructions (:mod:`chatbot.cpu`);
* ``int4``: every MatMul of the layers and the LM head is a MatMulNBits over 4-bit weights in
  blocks of 32 inputs, one scale each, its input quantised to int8 per block by the kernel;
  ``fp16``: half-precision weights and KV cache for CUDA; ``fp32``: exact, for checks;
* on the CPU (``int8``, ``fp32``) each SkipLayerNormalization is written as Add(s) and a
  LayerNormalization instead: ONNX Runtime's CPU SkipLayerNormalization took 3× as long for a
  128-token prompt (and longer for one token) as the same sum and norm in two plain nodes.

:func:`build_variant` writes ``onnx/<name>/model.onnx`` only after the variant has been compared
with the reference export on several sequences (prefill, then decode steps through the cache)
and records the figures in ``card.json`` under ``onnx.<name>``. Needs ``onnx`` and
``onnxruntime``; never torch.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatbot.cpu import ACTIVATIONS, detected_int8_kind, int8_initializers, int8_kind
from chatbot.errors import ExportError, ModelFolderError
from chatbot.folder import GRAPH_FORMAT, TABLES_FILE, read_json_object
from chatbot.fused import QUERY_LENGTHS, FixedSlots, FusedSession, past_names, present_names
from chatbot.types import Progress
from training.card import set_card_entry, utc_now
from training.export.kv_cache import (
    CALIBRATION_SEQUENCES,
    DEFAULT_KV_CACHE,
    KV_CACHES,
    MARGIN,
    calibrate_kv_scales,
    fingerprint,
)
from training.export.parity import (
    MAX_PARITY_LENGTH,
    PARITY_SEED,
    check_model_folder,
    load_session,
    onnx_logits,
    parity_sequences,
    temporary_folder,
)

if TYPE_CHECKING:
    import onnx

OPSET = 17
INT8_OPSET = 21
MS_DOMAIN = "com.microsoft"
MS_OPS = {
    "SkipLayerNormalization",
    "GroupQueryAttention",
    "FastGelu",
    "Gelu",
    "MatMulIntegerToFloat",
    "MatMulNBits",
}
WEIGHT_LEVELS = 63  # int8 weights use 7 bits where the CPU multiplies in int16 pairs (AVX2)
FULL_WEIGHT_LEVELS = 127  # and 8 bits where it does not (VNNI, AMX): see chatbot.cpu
INT8_CACHE = {"int8", "int4"}  # the precisions that can keep them in int8 (the CPU graphs)
INT4_BLOCK = 256  # int4 weights: one scale per 256 inputs of an output column (README, "Fast graphs")
INT4_FALLBACK_BLOCK = 128  # where blocks of 256 lose too much (chatbot train measures, see int4_block)
SCORED = "score_from"  # input: the first position the LM head scores, from the end ([-1]: the last)
KV_SCALES_FILE = "kv_scales.npy"  # beside a graph with an int8 cache: its scales, (layers, 2, channels)
PREFILL_FILE = "prefill.onnx"  # beside cpu-int8 with an int8 cache: its prompts' float32-cache graph
TABLES = ("wte", "wpe")  # the CPU graphs' float embedding tables (Gather reads a row a token)
TABLE_ALIGNMENT = 4096  # each table at a page boundary of the file, so ONNX Runtime can map it


@dataclass(frozen=True)
class Precision:
    """How one variant stores its weights, and how close to the reference it must stay."""

    name: str  # fp32 | fp16 | int8 | int4
    device: str  # the device it is built for
    rel_tolerance: float  # largest logit difference / largest reference logit magnitude
    min_greedy_agreement: float  # share of checked positions whose greedy token must be the reference's


VARIANTS: dict[str, Precision] = {
    # int8 (rows quantised one by one, 7-bit weights) moves logits by 1-2 % of their range on
    # tiny and trained models and ~6 % on a random GPT-2 124M; near-ties on random sequences
    # may flip a greedy pick. A mis-wired graph is off by > 100 % with agreement near chance.
    # 8-bit weights on AVX2 were off by 7-40 % (saturation, see _GraphWriter._int8_matmul).
    # Quality is judged by perplexity.
    "cpu-int8": Precision("int8", "cpu", rel_tolerance=0.15, min_greedy_agreement=0.75),
    # int4 (blocks of 32 weights, activations int8 per block) moves logits more: ~30 % of their
    # range on a random GPT-2 124M with 47 % of greedy picks the same. Judged by perplexity (the
    # engine serves it only within 3 % of the reference: chatbot.loader).
    "cpu-int4": Precision("int4", "cpu", rel_tolerance=0.5, min_greedy_agreement=0.3),
    "cpu-fp32": Precision("fp32", "cpu", rel_tolerance=1e-4, min_greedy_agreement=1.0),
    "cuda-fp16": Precision("fp16", "cuda", rel_tolerance=1e-2, min_greedy_agreement=0.95),
}
DEFAULT_VARIANTS = ("cpu-int8", "cpu-int4")
SUPPORTED_ACTIVATIONS = {"gelu_new": "FastGelu", "gelu_pytorch_tanh": "FastGelu", "gelu": "Gelu"}


# -- weights -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gpt2Config:
    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    vocab_size: int
    epsilon: float
    activation: str  # the ORT operator for the MLP activation
    layer_scales: tuple[float, ...]  # attention scale of each layer

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def read_config(config: dict[str, Any], where: Path) -> Gpt2Config:
    """The facts of a GPT-2 ``config.json``; :class:`ExportError` for what the builder cannot write."""
    if config.get("model_type") != "gpt2":
        raise ExportError(
            f"{where} is a {config.get('model_type')!r} model; the graph builder writes GPT-2 only",
            hint="serve it through the reference export (onnx/model.onnx)",
        )
    activation = SUPPORTED_ACTIVATIONS.get(str(config.get("activation_function", "gelu_new")))
    if activation is None or config.get("reorder_and_upcast_attn"):
        raise ExportError(
            f"{where}: activation {config.get('activation_function')!r} or reordered attention "
            "is not supported by the graph builder",
            hint="serve it through the reference export (onnx/model.onnx)",
        )
    n_layer, n_head, n_embd = int(config["n_layer"]), int(config["n_head"]), int(config["n_embd"])
    base = 1 / math.sqrt(n_embd // n_head) if config.get("scale_attn_weights", True) else 1.0
    by_layer = bool(config.get("scale_attn_by_inverse_layer_idx"))
    return Gpt2Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=int(config["n_positions"]),
        vocab_size=int(config["vocab_size"]),
        epsilon=float(config.get("layer_norm_epsilon", 1e-5)),
        activation=activation,
        layer_scales=tuple(base / (i + 1) if by_layer else base for i in range(n_layer)),
    )


def folder_config(folder: Path) -> Gpt2Config:
    """The facts of ``folder``'s ``config.json`` (see :func:`read_config`)."""
    return read_config(read_json_object(folder / "config.json"), folder)


def load_weights(folder: Path) -> dict[str, np.ndarray]:
    """The folder's safetensors weights as float32 numpy arrays, keyed without ``transformer.``."""
    from safetensors.numpy import load_file

    file = folder / "model.safetensors"
    if not file.is_file():
        raise ModelFolderError(f"{file} is missing", hint="build the folder with `chatbot train ...`")
    weights = {}
    for key, value in load_file(str(file)).items():
        weights[key.removeprefix("transformer.")] = value.astype(np.float32)
    return weights


# -- the graph -----------------------------------------------------------------------------


class _GraphWriter:
    """Collects nodes and initializers; turns weights into the variant's precision."""

    def __init__(
        self, precision: str, weight_levels: int = WEIGHT_LEVELS, int4_block: int = INT4_BLOCK
    ) -> None:
        from onnx import TensorProto

        self.precision = precision
        self.weight_levels = weight_levels  # int8: largest |quantised weight| (63 or 127)
        self.int4_block = int4_block  # int4: inputs of a column that share a scale
        self.float_type = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
        self.uint8 = TensorProto.UINT8
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._int8_constants = False
        self._zero_points: set[int] = set()
        self._last_axis = False
        # int8 quantises rows with a blocked QuantizeLinear, new in opset 21
        self.opset = INT8_OPSET if precision in ("int8", "int4") else OPSET

    def constant(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.array(array, order="C"), name))
        return name

    def floats(self, name: str, array: np.ndarray) -> str:
        """A float weight in the variant's float type (fp16 for fp16, float32 otherwise)."""
        return self.constant(name, array.astype(np.float16 if self.precision == "fp16" else np.float32))

    def node(self, op: str, inputs: Sequence[str], outputs: Sequence[str], **attributes: Any) -> None:
        from onnx import helper

        domain = MS_DOMAIN if op in MS_OPS else ""
        name = f"{op}_{len(self.nodes)}"
        self.nodes.append(
            helper.make_node(op, list(inputs), list(outputs), name=name, domain=domain, **attributes)
        )

    def matmul(self, x: str, weight: np.ndarray, bias: np.ndarray | None, out: str, rank: int = 3) -> None:
        """``out = x @ weight (+ bias)``; weight is (in, out), ``x`` of ``rank`` dimensions."""
        base = out + ".weight"
        if self.precision == "int8":
            self._int8_matmul(x, weight, bias, out, rank)
            return
        if self.precision == "int4":
            self._int4_matmul(x, weight, bias, out)
            return
        if bias is None:
            self.node("MatMul", [x, self.floats(base, weight)], [out])
            return
        self.node("MatMul", [x, self.floats(base, weight)], [out + ".nobias"])
        self.node("Add", [out + ".nobias", self.floats(out + ".bias", bias)], [out])

    def _int8_matmul(self, x: str, weight: np.ndarray, bias: np.ndarray | None, out: str, rank: int) -> None:
        """``x @ weight`` in int8, each row of ``x`` quantised with its own scale.

        A row's result then never depends on the other rows of the batch, so a reply decoded in a
        batch is token for token the reply decoded alone (ONNX Runtime's DynamicQuantizeMatMul
        uses one scale for the whole tensor). Activations: symmetric, max|row| / 127, stored as
        uint8 around 128 by one blocked QuantizeLinear (opset 21, one block per row), which is
        the same arithmetic as Div, Round, Add and Cast in one pass over the row (2x as fast for
        the 128 x 3072 rows of a prompt's MLP). Weights: one scale per output column, 8 bits
        (|q| <= 127) when built on a CPU with VNNI or AMX, which sum the products exactly, and 7
        bits (|q| <= 63) on AVX2, which multiplies uint8 by int8 in pairs summed into int16 and
        saturates with 8-bit weights (the ``reduce_range`` of ONNX Runtime's own quantiser). An
        AVX2-only CPU loads a graph with 8-bit weights with 7-bit activations instead (|row| / 63
        around 64, the initializers of :data:`chatbot.cpu.ACTIVATIONS`), so it never saturates.
        """
        if not self._int8_constants:
            self.constant("int8.eps", np.array(1e-12, dtype=np.float32))
            for name, value in ACTIVATIONS["u8"].items():  # load-time overridable (chatbot.cpu)
                self.constant(name, value)
            self.constant("int8.one", np.array(1.0, dtype=np.float32))
            self._int8_constants = True
        levels = self.weight_levels
        scale = np.abs(weight).max(axis=0) / levels  # (out,) one per output column
        scale[scale == 0] = 1.0
        quantized = np.clip(np.round(weight / scale), -levels, levels).astype(np.int8)
        q = out + ".q"
        self.node("Abs", [x], [q + ".abs"])
        self.reduce_max(q + ".abs", q + ".max", keepdims=1)  # (..., 1)
        self.node("Max", [q + ".max", "int8.eps"], [q + ".range"])
        self.node("Mul", [q + ".range", "int8.inv_levels"], [q + ".row_scale"])
        zero_point = self._row_zero_points(q + ".row_scale", rank)
        quantize = [x, q + ".row_scale", zero_point]
        self.node("QuantizeLinear", quantize, [q + ".u8"], axis=-1, block_size=weight.shape[0])
        weights = self.constant(out + ".weight", quantized)
        column_scale = self.constant(out + ".weight.scale", scale.astype(np.float32))
        # (u8 - 128) @ w * column scale in one kernel; then each row's own scale, then the bias
        integer = [q + ".u8", weights, "int8.one", column_scale, "int8.zero_point"]
        self.node("MatMulIntegerToFloat", integer, [q + ".columns"])
        if bias is None:
            self.node("Mul", [q + ".columns", q + ".row_scale"], [out])
            return
        self.node("Mul", [q + ".columns", q + ".row_scale"], [q + ".nobias"])
        self.node("Add", [q + ".nobias", self.floats(out + ".bias", bias)], [out])

    def _int4_matmul(self, x: str, weight: np.ndarray, bias: np.ndarray | None, out: str) -> None:
        """``x @ weight`` with 4-bit weights in blocks of ``int4_block`` along the input axis
        (ONNX Runtime's ``MatMulNBits``; with ``accuracy_level`` 4 it quantises each row of ``x``
        to int8 per block itself, so a row's result never depends on its batch)."""
        k, n = weight.shape
        packed, scales = quantize_int4(weight, self.int4_block)
        inputs = [x, self.constant(out + ".weight", packed), self.constant(out + ".weight.scale", scales)]
        product = out if bias is None else out + ".nobias"
        block = self.int4_block
        self.node("MatMulNBits", inputs, [product], K=k, N=n, bits=4, block_size=block, accuracy_level=4)
        if bias is not None:
            self.node("Add", [product, self.floats(out + ".bias", bias)], [out])

    def _row_zero_points(self, row_scale: str, rank: int) -> str:
        """128 for each row (QuantizeLinear wants its zero point shaped like its scale); written
        once per rank of activation (every (batch, sequence) row shares it, and the LM head's
        (batch,) rows theirs)."""
        name = f"int8.zero_points.{rank}d"
        if rank not in self._zero_points:
            self.node("Shape", [row_scale], [name + ".shape"])
            self.node("Expand", ["int8.zero_point", name + ".shape"], [name])
            self._zero_points.add(rank)
        return name

    def reduce_max(self, x: str, out: str, *, keepdims: int) -> None:
        """ReduceMax over the last axis (an attribute before opset 18, an input since)."""
        if self.opset < 18:
            self.node("ReduceMax", [x], [out], axes=[-1], keepdims=keepdims)
            return
        if not self._last_axis:
            self.constant("last_axis", np.array([-1], dtype=np.int64))
            self._last_axis = True
        self.node("ReduceMax", [x, "last_axis"], [out], keepdims=keepdims)


def takes_query_lengths() -> bool:
    """Whether this ONNX Runtime's GroupQueryAttention takes ``query_seqlens`` (1.32 and later):
    rows of one step feeding different numbers of tokens over their caches. A graph written with
    it needs such an ONNX Runtime to load; one written without it (on 1.31) verifies drafts one
    reply at a time."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

    schemas = getattr(ort_state, "get_all_operator_schema", None)
    if schemas is None:
        return False
    return any(
        schema.name == "GroupQueryAttention" and any(i.name == QUERY_LENGTHS for i in schema.inputs)
        for schema in schemas()
    )


def quantize_int4(weight: np.ndarray, block: int = INT4_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """``weight`` (in, out) as ``MatMulNBits`` wants it: (out, blocks, block / 2) bytes of two
    4-bit values (low nibble first, stored as q + 8 for q in -8..7) and (out * blocks,) float
    scales, one per ``block`` inputs of a column (inputs padded with zeros). A block's
    weight of largest magnitude w is stored as -8 (scale w / -8), so all 16 levels are used: on
    the demo model's weights 22 % less squared error than max |w| / 7 with -7..7."""
    k, n = weight.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), dtype=np.float32)
    padded[:, :k] = weight.T
    grouped = padded.reshape(n, blocks, block)  # (out, blocks, block)
    widest = np.take_along_axis(grouped, np.abs(grouped).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    scale = widest / -8  # (out, blocks), negative where that value is positive
    scale[scale == 0] = 1.0
    q = (np.clip(np.round(grouped / scale[..., None]), -8, 7) + 8).astype(np.uint8)
    packed = q[..., 0::2] | (q[..., 1::2] << 4)  # (out, blocks, block / 2)
    return np.ascontiguousarray(packed), scale.reshape(-1).astype(np.float32)


def build_graph(
    config: Gpt2Config,
    weights: dict[str, np.ndarray],
    precision: str,
    *,
    weight_levels: int = WEIGHT_LEVELS,
    kv_scales: np.ndarray | None = None,
    int4_block: int = INT4_BLOCK,
) -> onnx.ModelProto:
    """The fused GPT-2 decoder as an ONNX model (see the module docstring for its shape);
    ``weight_levels``: int8's largest |quantised weight|; ``kv_scales`` (n_layer, 2, n_embd): an
    int8 KV cache with these scales per channel (:mod:`training.export.kv_cache`);
    ``int4_block``: int4's inputs per scale."""
    return _Builder(
        config, weights, precision, weight_levels=weight_levels, kv_scales=kv_scales, int4_block=int4_block
    ).model()


class _Builder:
    """Writes the decoder block by block from ``weights`` (keys as in GPT-2's safetensors)."""

    def __init__(
        self,
        config: Gpt2Config,
        weights: dict[str, np.ndarray],
        precision: str,
        *,
        weight_levels: int = WEIGHT_LEVELS,
        kv_scales: np.ndarray | None = None,
        int4_block: int = INT4_BLOCK,
    ) -> None:
        self.config = config
        self.weights = weights
        self.w = _GraphWriter(precision, weight_levels, int4_block)
        self.kv_scales = kv_scales
        # the CPU graphs take query_seqlens where this ONNX Runtime has it (1.32+): drafts of
        # several replies verified in one step; the GPU's fp16 graph steps one token a row
        self.pads_rows = precision != "fp16" and takes_query_lengths()

    def model(self) -> onnx.ModelProto:
        from onnx import TensorProto, helper

        config, w, weights = self.config, self.w, self.weights
        ft = w.float_type
        batch, seq, cache = "batch", "sequence", "max_length"
        heads, dim = config.n_head, config.head_dim
        inputs = [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, [batch, seq]),
            helper.make_tensor_value_info("position_ids", TensorProto.INT64, [batch, seq]),
            helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [batch]),
            helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
        ]
        # the LM head scores positions score_from.. of the sequence, from its end ([-1]: the last only)
        inputs.append(helper.make_tensor_value_info(SCORED, TensorProto.INT64, [1]))
        if self.pads_rows:  # each row's number of new positions (the rest is padding)
            inputs.append(helper.make_tensor_value_info(QUERY_LENGTHS, TensorProto.INT32, [batch]))
        outputs = [
            helper.make_tensor_value_info("logits", ft, [batch, config.vocab_size]),
            helper.make_tensor_value_info("next_token", TensorProto.INT64, [batch]),
            helper.make_tensor_value_info("next_logprob", TensorProto.FLOAT, [batch]),
            helper.make_tensor_value_info("next_position_ids", TensorProto.INT64, [batch, 1]),
            helper.make_tensor_value_info("next_seqlens_k", TensorProto.INT32, [batch]),
            helper.make_tensor_value_info("greedy_tokens", TensorProto.INT64, [batch, "scored"]),
            helper.make_tensor_value_info("greedy_logprobs", TensorProto.FLOAT, [batch, "scored"]),
        ]
        kv_type = ft if self.kv_scales is None else TensorProto.INT8
        for past, present in zip(past_names(config.n_layer), present_names(config.n_layer), strict=True):
            inputs.append(helper.make_tensor_value_info(past, kv_type, [batch, heads, cache, dim]))
            outputs.append(helper.make_tensor_value_info(present, kv_type, [batch, heads, cache, dim]))

        w.node("Gather", [w.floats("wte", weights["wte.weight"]), "input_ids"], ["tokens"])
        w.node("Gather", [w.floats("wpe", weights["wpe.weight"]), "position_ids"], ["positions"])
        # the residual stream starts as tokens + positions; every SkipLayerNormalization adds a
        # branch's output (+ its bias) to the stream and normalises the sum for the next branch
        normed, stream = self.skip_norm("tokens", "positions", "h.0.ln_1", None, "l0")
        for i in range(config.n_layer):
            normed, stream = self.layer(i, normed, stream)
        self.lm_head(normed)
        self.next_step_inputs()
        graph = helper.make_graph(w.nodes, "gpt2_fused", inputs, outputs, w.initializers)
        opsets = [helper.make_opsetid("", w.opset), helper.make_opsetid(MS_DOMAIN, 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="chatbot.training.graph")
        model.ir_version = min(model.ir_version, 10)  # what every ONNX Runtime the engine supports reads
        return model

    def lm_head(self, normed: str) -> None:
        """The LM head on the last ``-score_from`` positions of ``normed`` (batch, sequence, n_embd).

        ``greedy_tokens`` and ``greedy_logprobs`` (batch, scored): the greedy pick after each
        scored position and its log-probability (the largest log-softmax, in float32), which is
        what a step verifying drafted tokens needs (``chatbot.scheduler``); ``logits`` (batch,
        vocab), ``next_token`` and ``next_logprob`` (batch,): the last position's. The head runs
        on (batch * scored) rows of one MatMul; scoring one position (``score_from`` [-1]) costs
        what the last-position head did, plus a few reshapes. ``score_from`` goes straight to a
        Slice as its start, so it stays in host memory (like ``total_sequence_length``).
        """
        from onnx import TensorProto

        w, vocab = self.w, self.config.vocab_size
        axis = w.constant("sequence_axis", np.array([1], dtype=np.int64))
        end = w.constant("last_end", np.array([np.iinfo(np.int64).max], dtype=np.int64))
        w.node("Slice", [normed, SCORED, end, axis], ["scored_hidden"])  # (batch, scored, n_embd)
        w.node("Shape", ["scored_hidden"], ["scored_hidden.shape"], end=2)  # [batch, scored]
        rows = w.constant("scored_rows", np.array([-1, self.config.n_embd], dtype=np.int64))
        w.node("Reshape", ["scored_hidden", rows], ["scored_rows_hidden"])  # (batch * scored, n_embd)
        lm_head = self.weights.get("lm_head.weight", self.weights["wte.weight"]).T  # untied copy: see CPU.md
        w.matmul("scored_rows_hidden", lm_head, None, "scored_logits", rank=2)  # (batch * scored, vocab)
        w.node("ArgMax", ["scored_logits"], ["scored_tokens"], axis=-1, keepdims=0)
        scores = "scored_logits"
        if w.precision == "fp16":
            w.node("Cast", [scores], ["scored_logits.float"], to=TensorProto.FLOAT)
            scores = "scored_logits.float"
        w.node("LogSoftmax", [scores], ["scored_logprobs_all"], axis=-1)
        w.reduce_max("scored_logprobs_all", "scored_logprobs", keepdims=0)
        w.node("Reshape", ["scored_tokens", "scored_hidden.shape"], ["greedy_tokens"])
        w.node("Reshape", ["scored_logprobs", "scored_hidden.shape"], ["greedy_logprobs"])
        vocab_axis = w.constant("vocab_size", np.array([vocab], dtype=np.int64))
        w.node("Concat", ["scored_hidden.shape", vocab_axis], ["scored_logits.shape"], axis=0)
        w.node("Reshape", ["scored_logits", "scored_logits.shape"], ["scored_logits.3d"])
        last = w.constant("last_position", np.array(-1, dtype=np.int64))
        w.node("Gather", ["scored_logits.3d", last], ["logits"], axis=1)  # (batch, vocab)
        w.node("Gather", ["greedy_tokens", last], ["next_token"], axis=1)  # (batch,)
        w.node("Gather", ["greedy_logprobs", last], ["next_logprob"], axis=1)

    def next_step_inputs(self) -> None:
        """The next single-token step's ``next_position_ids`` and ``next_seqlens_k`` (position
        and length - 1), computed on the device. Bound as the next step's inputs with
        ``next_token``, they let a decode step feed itself (``chatbot.fused.FixedSlots``): only
        token ids and log-probabilities go to the host.
        """
        w = self.w
        step = w.constant("one_position", np.array([1], dtype=np.int64))
        begin = w.constant("last_start", np.array([-1], dtype=np.int64))
        w.node("Slice", ["position_ids", begin, "last_end", "sequence_axis"], ["last_position_ids"])
        w.node("Add", ["last_position_ids", step], ["next_position_ids"])
        one = w.constant("one_length", np.array(1, dtype=np.int32))
        w.node("Add", ["seqlens_k", one], ["next_seqlens_k"])

    def layer(self, i: int, normed: str, stream: str) -> tuple[str, str]:
        """Block ``i``; returns the next block's normalised input and the residual stream."""
        config, w, weights, p = self.config, self.w, self.weights, f"h.{i}."
        w.matmul(normed, weights[p + "attn.c_attn.weight"], weights[p + "attn.c_attn.bias"], f"l{i}.qkv")
        past_k, past_v = past_names(config.n_layer)[2 * i : 2 * i + 2]
        present_k, present_v = present_names(config.n_layer)[2 * i : 2 * i + 2]
        attention = [f"l{i}.qkv", "", "", past_k, past_v, "seqlens_k", "total_sequence_length"]
        quantized: dict[str, Any] = {}
        if self.kv_scales is not None:  # int8 cache: cos, sin, positions, bias, sink unused; then the scales
            k_scale = w.floats(f"l{i}.k_scale", self.kv_scales[i, 0])
            v_scale = w.floats(f"l{i}.v_scale", self.kv_scales[i, 1])
            attention += ["", "", "", "", "", k_scale, v_scale]
            quantized = {
                "k_quant_type": "PER_CHANNEL",
                "v_quant_type": "PER_CHANNEL",
                "kv_cache_bit_width": 8,
            }
        if self.pads_rows:  # input 16, after the rotary, bias, sink, scale and norm inputs
            attention += [""] * (16 - len(attention)) + [QUERY_LENGTHS]
        w.node(
            "GroupQueryAttention",
            attention,
            [f"l{i}.attn", present_k, present_v],
            num_heads=config.n_head,
            kv_num_heads=config.n_head,
            scale=config.layer_scales[i],
            **quantized,
        )
        w.matmul(f"l{i}.attn", weights[p + "attn.c_proj.weight"], None, f"l{i}.attn_out")
        attn_bias = weights[p + "attn.c_proj.bias"]
        normed, stream = self.skip_norm(f"l{i}.attn_out", stream, p + "ln_2", attn_bias, f"l{i}.mlp")
        w.matmul(normed, weights[p + "mlp.c_fc.weight"], None, f"l{i}.fc")
        fc_bias = w.floats(f"l{i}.fc.bias", weights[p + "mlp.c_fc.bias"])
        w.node(config.activation, [f"l{i}.fc", fc_bias], [f"l{i}.act"])
        w.matmul(f"l{i}.act", weights[p + "mlp.c_proj.weight"], None, f"l{i}.mlp_out")
        after = f"h.{i + 1}.ln_1" if i + 1 < config.n_layer else "ln_f"
        mlp_bias = weights[p + "mlp.c_proj.bias"]
        return self.skip_norm(f"l{i}.mlp_out", stream, after, mlp_bias, f"l{i + 1}")

    def skip_norm(
        self, branch: str, stream: str, norm: str, bias: np.ndarray | None, out: str
    ) -> tuple[str, str]:
        """``stream' = branch + bias + stream``; returns (layer_norm(stream'), stream')."""
        w, weights = self.w, self.weights
        gamma = w.floats(norm + ".weight", weights[norm + ".weight"])
        inputs = [branch, stream, gamma, w.floats(norm + ".bias", weights[norm + ".bias"])]
        if bias is not None:
            inputs.append(w.floats(out + ".skip_bias", bias))
        normed, summed = out + ".normed", out + ".stream"
        if w.precision == "fp16":  # CUDA: one fused kernel
            w.node("SkipLayerNormalization", inputs, [normed, "", "", summed], epsilon=self.config.epsilon)
            return normed, summed
        if bias is not None:  # the CPU: see the module docstring
            w.node("Add", [branch, inputs[4]], [out + ".branch"])
            branch = out + ".branch"
        w.node("Add", [branch, stream], [summed])
        w.node("LayerNormalization", [summed, *inputs[2:4]], [normed], axis=-1, epsilon=self.config.epsilon)
        return normed, summed


# -- building and checking a variant -------------------------------------------------------


def build_variant(
    model_dir: str | os.PathLike[str],
    variant: str = "cpu-int8",
    *,
    sequences: int = 4,
    decode_steps: int = 8,
    progress: Progress | None = None,
    kv_cache: str = DEFAULT_KV_CACHE,
    int4_block: int = INT4_BLOCK,
    kv_scales: np.ndarray | None = None,
) -> dict[str, Any]:
    """Write ``onnx/<variant>/model.onnx`` for ``model_dir`` once it agrees with the reference.

    The reference export (``onnx/model.onnx``, see :func:`training.export.reference.export_onnx`) must
    exist. The variant is compared with it on ``sequences`` sequences (a rendered chat and
    random ids): a prefill, then ``decode_steps`` single-token steps through the cache. It is
    installed, and recorded in ``card.json`` under ``onnx.<variant>``, only when the largest
    logit difference relative to the largest reference logit is within the precision's
    tolerance (and, for fp32, every greedy token is the same). Returns the card entry.

    ``kv_cache``: "float" (the graph's float type) or "int8": the int8 and int4 graphs then keep
    keys and values in int8 with calibrated scales (:mod:`training.export.kv_cache`: a quarter of
    the cache's memory and 2.5× faster attention at 32 rows, 3× slower attention over a prompt).
    ``int4_block``: how many inputs of a column share a scale in int4 (:data:`INT4_BLOCK`, or
    :data:`INT4_FALLBACK_BLOCK` where ``chatbot train`` found those too coarse). ``kv_scales``:
    the int8 cache's scales when the caller calibrated them already (:func:`build_variants` does
    once for all its graphs); otherwise they are calibrated here.
    """
    if kv_cache not in KV_CACHES:
        raise ExportError(f"unknown KV cache {kv_cache!r}", hint=f"use one of {', '.join(KV_CACHES)}")

    folder = check_model_folder(model_dir)
    precision = _precision(variant)
    say = progress or (lambda message: None)
    reference = folder / "onnx" / "model.onnx"
    if not reference.is_file():
        raise ModelFolderError(f"{reference} is missing", hint=f"run `chatbot export {folder}` first")
    config = folder_config(folder)
    quantized = _quantization(precision, int4_block)
    say(f"writing the fused {precision.name} graph ({variant}) from {folder / 'model.safetensors'}")
    levels = quantized.get("weight_levels", WEIGHT_LEVELS)
    if kv_cache != "int8" or precision.name not in INT8_CACHE:
        kv_scales = None
    elif kv_scales is None:
        kv_scales = _calibrated(folder, say)
    weights = load_weights(folder)
    model = build_graph(
        config, weights, precision.name, weight_levels=levels, kv_scales=kv_scales, int4_block=int4_block
    )
    with temporary_folder(folder) as tmp:
        path = tmp / "model.onnx"
        on_cpu = precision.device == "cpu"
        _save(model, path, tables=on_cpu)
        say(f"checking {variant} against the reference on {sequences} sequences, {decode_steps} decode steps")

        def parity_of(graph: Path, activations: str) -> dict[str, Any]:
            loaded = int8_initializers(quantized, "avx2" if activations == "u7" else "vnni")
            steps = {"sequences": sequences, "decode_steps": decode_steps}
            return measure_variant_parity(folder, graph, precision, **steps, initializers=loaded)

        checks = {}
        for activations in _checked_activations(quantized):
            parity = parity_of(path, activations)
            _check(parity, precision, f"{variant} ({activations} activations)" if quantized else variant)
            checks[activations] = parity
        prefill = None
        if kv_scales is not None:
            np.save(tmp / KV_SCALES_FILE, kv_scales)
            if precision.name == "int8":  # its prompts run with float32 keys and values (QuantizingPrefill)
                model_of_prompts = build_graph(config, weights, precision.name, weight_levels=levels)
                prefill = _prefill_graph(tmp, model_of_prompts, precision, quantized, parity_of, say)
        target = folder / "onnx" / variant
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(exist_ok=True)
        os.replace(tmp, target)
    entry = {
        "path": f"onnx/{variant}/model.onnx",
        "builder": "chatbot.training.graph",
        "format": GRAPH_FORMAT,
        "precision": precision.name,
        "device": precision.device,
        "nodes": len(model.graph.node),
        "built_at": utc_now(),
        **quantized,
        "parity": checks.get("u8") or checks["u7"],
    }
    if kv_scales is not None:
        entry["kv_cache"] = {
            "dtype": "int8",
            "scales": "per channel, calibrated through the reference export",
            "sequences": CALIBRATION_SEQUENCES,
            "margin": MARGIN,
            "fingerprint": fingerprint(kv_scales),
            "scales_file": f"onnx/{variant}/{KV_SCALES_FILE}",
        }
    if prefill is not None:
        entry["prefill"] = {"path": f"onnx/{variant}/{PREFILL_FILE}", "kv_cache": "float", **prefill}
    if "u7" in checks:  # how it serves on an AVX2-only CPU (chatbot.cpu)
        entry["parity_u7"] = checks["u7"]
    set_card_entry(folder, ("onnx", variant), entry)
    say(f"wrote onnx/{variant}/model.onnx ({entry['nodes']} nodes, {_describe(entry['parity'])})")
    return entry


def _prefill_graph(
    tmp: Path,
    model: onnx.ModelProto,
    precision: Precision,
    quantized: dict[str, Any],
    parity_of: Callable[[Path, str], dict[str, Any]],
    say: Progress,
) -> dict[str, Any]:
    """Write ``model`` as ``tmp / PREFILL_FILE``: the int8 graph with float32 keys and values,
    which prefills the prompts of the graphs that keep them in int8 (their own attention over a
    prompt is ~3x slower: ``chatbot.fused.QuantizingPrefill``); checked against the reference as
    the graph is. Its card entry's part."""
    _save(model, tmp / PREFILL_FILE, tables=True)
    say(f"checking its prompts' graph ({PREFILL_FILE}, float32 keys and values) against the reference")
    activations = _checked_activations(quantized)[0]
    parity = parity_of(tmp / PREFILL_FILE, activations)
    _check(parity, precision, f"{PREFILL_FILE} ({activations} activations)")
    return {"nodes": len(model.graph.node), "parity": parity}


def _quantization(precision: Precision, int4_block: int = INT4_BLOCK) -> dict[str, Any]:
    """What the card records of a quantised graph: the int8 weights' range, chosen by this CPU's
    int8 kind (:mod:`chatbot.cpu`: 8 bits where VNNI or AMX sum exactly, 7 on AVX2), and the
    kind it was built on; nothing for float graphs."""
    if precision.name not in ("int8", "int4"):
        return {}
    kind = int8_kind()
    entry: dict[str, Any] = {"built_for": kind}
    if precision.name == "int8":
        entry["weight_levels"] = WEIGHT_LEVELS if kind == "avx2" else FULL_WEIGHT_LEVELS
    if precision.name == "int4":
        entry["block_size"] = int4_block
    return entry


def _checked_activations(quantized: dict[str, Any]) -> list[str]:
    """The activation schemes to check a graph in: uint8 (how VNNI and AMX serve it), and with
    8-bit int8 weights also the 7-bit activations an AVX2-only CPU serves it with (exact on every
    CPU); 8-bit weights with uint8 cannot be checked on an AVX2-only CPU (it saturates)."""
    if quantized.get("weight_levels", WEIGHT_LEVELS) <= WEIGHT_LEVELS:
        return ["u8"]
    return ["u7"] if detected_int8_kind() == "avx2" else ["u8", "u7"]


def _precision(variant: str) -> Precision:
    if variant not in VARIANTS:
        raise ExportError(f"unknown variant {variant!r}", hint=f"choose from {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def _describe(parity: dict[str, Any]) -> str:
    return (
        f"logits within {parity['max_rel_diff']:.2g} of the reference, "
        f"greedy tokens {parity['greedy_agreement']:.1%} the same"
    )


def _save(model: onnx.ModelProto, path: Path, *, tables: bool = False) -> None:
    """Save ``model``; weights over 1 GiB in all go to ``model.onnx.data`` beside it (protobuf's limit).

    With ``tables`` (the CPU graphs) the float embedding tables (:data:`TABLES`) go to
    :data:`TABLES_FILE` beside it instead, shared by the graphs of that folder (the int8 graph and
    its prompts' twin): ONNX Runtime maps the file rather than copying the tables into each
    session, and a decode step reads a few rows of them, so they cost the page cache what the
    conversations touch, not 150 MB of each session's memory (GPT-2 124M's int8 graph and its twin:
    617 MiB resident after a reply, 321 with the file; the replies the same)."""
    import onnx

    if tables:
        _tables_beside(model, path)
    large = model.ByteSize() > 1 << 30
    onnx.save(model, str(path), save_as_external_data=large, location=path.name + ".data")


def _tables_beside(model: onnx.ModelProto, path: Path) -> None:
    """Point the embedding tables of ``model`` (to be saved as ``path``) at :data:`TABLES_FILE`
    beside it, each at a page-aligned offset (so that ONNX Runtime can map it), writing the file
    when it is not there yet; one written by another graph of the folder must hold the same."""
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    file = path.parent / TABLES_FILE
    tensors = [tensor for tensor in model.graph.initializer if tensor.name in TABLES]
    if not tensors:
        return
    arrays = [numpy_helper.to_array(tensor) for tensor in tensors]
    offsets, end = [], 0
    for array in arrays:
        offsets.append(end)
        end = -(-(end + array.nbytes) // TABLE_ALIGNMENT) * TABLE_ALIGNMENT
    if file.exists():  # never rewritten: a session of the graph saved first may map it already
        held = np.memmap(file, dtype=np.uint8, mode="r")
        same = held.size == end and all(
            np.array_equal(held[start : start + array.nbytes], array.reshape(-1).view(np.uint8))
            for start, array in zip(offsets, arrays, strict=True)
        )
        del held
        if not same:
            raise ExportError(
                f"{file} holds other embedding tables than {path.name}'s",
                hint="build the variant again with `chatbot export MODEL_DIR` (it writes a new folder)",
            )
    else:
        with file.open("wb") as out:
            for start, array in zip(offsets, arrays, strict=True):
                out.seek(start)
                out.write(np.ascontiguousarray(array).tobytes())
            out.truncate(end)
    for tensor, start, array in zip(tensors, offsets, arrays, strict=True):
        set_external_data(tensor, location=file.name, offset=start, length=array.nbytes)
        tensor.ClearField("raw_data")


def measure_variant_parity(
    folder: Path,
    path: Path,
    precision: Precision,
    *,
    sequences: int,
    decode_steps: int,
    initializers: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Compare the graph at ``path`` with the folder's reference export, position by position
    (``initializers``: replacing the graph's own, as :mod:`chatbot.cpu` does for a CPU)."""
    from chatbot.folder import ModelFolder

    spec = ModelFolder(folder).spec
    fused = FusedSession(path, spec, providers=_providers(precision), initializers=initializers)
    reference = load_session(folder / "onnx" / "model.onnx")
    limit = min(spec.n_positions, MAX_PARITY_LENGTH)
    worst_abs, worst_rel, same, compared = 0.0, 0.0, 0, 0
    for ids in parity_sequences(folder, sequences, decode_steps, limit, spec.vocab_size, PARITY_SEED):
        prefill = max(1, len(ids) - decode_steps)
        expected = onnx_logits(reference, ids, prefill)[prefill - 1 :]  # the positions the graph scores
        actual = np.stack(list(fused_logits(fused, ids, prefill)))
        diff = float(np.max(np.abs(expected - actual))) if np.isfinite(actual).all() else math.inf
        worst_abs = max(worst_abs, diff)
        worst_rel = max(worst_rel, diff / max(float(np.max(np.abs(expected))), 1e-12))
        same += int(np.sum(expected.argmax(-1) == actual.argmax(-1)))
        compared += len(expected)
    return {
        "max_abs_diff": worst_abs,
        "max_rel_diff": worst_rel,
        "tolerance": precision.rel_tolerance,
        "min_greedy_agreement": precision.min_greedy_agreement,
        "greedy_agreement": same / compared,
        "positions": compared,
        "sequences": sequences,
        "decode_steps": decode_steps,
        "against": "onnx/model.onnx",
    }


def fused_logits(session: FusedSession, ids: Sequence[int], prefill: int) -> Iterator[np.ndarray]:
    """The graph's last-position logits after the prefill, then after each following token
    (copies: a step's logits are overwritten by the next step)."""
    if session.device != "cpu":  # the cache lives on the device: the GPU's own way of stepping
        slots = FixedSlots(session, 1)
        yield slots.prefill(0, list(ids[:prefill])).logits[0].copy()
        for position in range(prefill, len(ids)):
            inputs = np.array([ids[position]]), np.array([position]), np.array([position], dtype=np.int32)
            yield slots.decode(1, inputs).logits[0].copy()
        return
    cache = session.new_cache(1, len(ids))
    yield session.step(cache, 0, [list(ids[:prefill])], [0]).logits[0].copy()
    for position in range(prefill, len(ids)):
        yield session.step(cache, 0, [[ids[position]]], [position]).logits[0].copy()


def _providers(precision: Precision) -> list[str]:
    if precision.device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError(
                "the cuda-fp16 variant is checked on the GPU, and this onnxruntime has no CUDA provider",
                hint="build it on a machine with onnxruntime-gpu (`pip install 'chatbot[gpu]'`)",
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _check(parity: dict[str, Any], precision: Precision, variant: str) -> None:
    """Raise :class:`ExportError` when the variant strays too far from the reference."""
    too_far = not parity["max_rel_diff"] <= precision.rel_tolerance
    greedy_differs = parity["greedy_agreement"] < precision.min_greedy_agreement
    if too_far or greedy_differs:
        raise ExportError(
            f"the {variant} graph differs from the reference export ({_describe(parity)}; "
            f"tolerance {precision.rel_tolerance:g} and {precision.min_greedy_agreement:.0%} of greedy "
            "tokens); nothing was written",
            hint="report the model config; the reference export (onnx/model.onnx) still serves",
        )


def build_variants(
    model_dir: str | os.PathLike[str],
    variants: Sequence[str] = DEFAULT_VARIANTS,
    *,
    progress: Progress | None = None,
    kv_cache: str = DEFAULT_KV_CACHE,
) -> dict[str, dict[str, Any]]:
    """:func:`build_variant` for each of ``variants``; returns their card entries by name."""
    say = progress or (lambda message: None)
    cached = [v for v in variants if _precision(v).name in INT8_CACHE]
    scales = _calibrated(check_model_folder(model_dir), say) if kv_cache == "int8" and cached else None
    built = {}
    for variant in variants:  # the same scales for every graph, calibrated once
        built[variant] = build_variant(
            model_dir, variant, progress=progress, kv_cache=kv_cache, kv_scales=scales
        )
    return built


def _calibrated(folder: Path, say: Progress) -> np.ndarray:
    say(f"calibrating the int8 keys and values through the reference ({CALIBRATION_SEQUENCES} sequences)")
    return calibrate_kv_scales(folder)
