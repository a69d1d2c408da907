"""How fast a graph could possibly run on this machine: the floors `chatbot bench` holds each
variant's figures against.

* **Decode floor** (ms/token at batch 1): every step reads each weight once, so a step cannot
  take less than the bytes it reads / the machine's read bandwidth. The bytes come from the
  graph itself: each initializer by dtype, the LM head included; a table only gathered from (the
  token and position embeddings) costs one row a token. Plus the KV cache the step attends over:
  keys and values of every layer at the decode's mean context (the prompt and half the reply).
* **First-token floor** (ms): a prompt's prefill is matrix products (per layer: QKV, attention
  out, MLP in and out, for every prompt token; then the LM head for the last token), so it cannot
  take less than their time at the machine's measured GEMM throughput for those shapes and the
  variant's precision. Attention scores (~3 % of the FLOPs at 128 tokens) and element-wise work
  are left out: the floor is a bound, not a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chatbot.folder import ModelFolder
from training.evaluation.machine import Gemm

INT8_MATMULS = {"MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QLinearMatMul", "QGemm"}


@dataclass(frozen=True)
class GraphReads:
    """What one decode step of a graph reads at batch 1, besides its KV cache."""

    weight_bytes_by_dtype: dict[str, int]  # bytes of initializers read per step, by ONNX dtype name
    precision: str  # of its matrix products: int8, int4, fp16 or fp32
    kv_itemsize: int  # bytes per cached key or value element

    @property
    def weight_bytes(self) -> int:
        return sum(self.weight_bytes_by_dtype.values())


def graph_reads(path: Path) -> GraphReads:
    """Read from the graph at ``path`` (its initializers' shapes only: no weights are loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, position))
    by_dtype: dict[str, int] = {}
    for tensor in graph.initializer:
        used = consumers.get(tensor.name, [])
        size = _nbytes(tensor.data_type, list(tensor.dims))
        if used and all(use == ("Gather", 0) for use in used) and tensor.dims:
            size //= max(1, tensor.dims[0])  # an embedding table: one row a token
        elif not used:
            size = 0
        dtype = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
        by_dtype[dtype] = by_dtype.get(dtype, 0) + size
    return GraphReads(by_dtype, _precision(graph), _kv_itemsize(graph))


def _nbytes(data_type: int, dims: list[int]) -> int:
    import onnx

    elements = 1
    for dim in dims:
        elements *= dim
    if data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (elements + 1) // 2
    return elements * onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize


def _precision(graph: Any) -> str:
    """The precision of the graph's matrix products, from their operators."""
    ops = {node.op_type for node in graph.node}
    if "MatMulNBits" in ops:
        bits = [
            a.i
            for node in graph.node
            if node.op_type == "MatMulNBits"
            for a in node.attribute
            if a.name == "bits"
        ]
        return f"int{bits[0] if bits else 4}"
    if ops & INT8_MATMULS:
        return "int8"
    import onnx

    largest = max(graph.initializer, key=lambda t: _nbytes(t.data_type, list(t.dims)), default=None)
    return "fp16" if largest is not None and largest.data_type == onnx.TensorProto.FLOAT16 else "fp32"


def _kv_itemsize(graph: Any) -> int:
    import onnx

    for value in graph.input:
        if "past" in value.name:
            return int(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).itemsize)
    return 4


def prefill_gemms(folder: ModelFolder, prompt_tokens: int) -> dict[str, Gemm]:
    """The matrix products of a ``prompt_tokens`` prefill, by name (each ``count`` times)."""
    spec = folder.spec
    d = spec.n_head * spec.head_dim
    inner = int(folder.config.get("n_inner") or 4 * d)
    t, layers = prompt_tokens, spec.n_layer
    return {
        "qkv": Gemm(t, d, 3 * d, layers),
        "attention_out": Gemm(t, d, d, layers),
        "mlp_in": Gemm(t, d, inner, layers),
        "mlp_out": Gemm(t, inner, d, layers),
        "lm_head": Gemm(1, d, spec.vocab_size, 1),  # the next token's logits only
    }


def variant_floors(
    folder: ModelFolder,
    graph: Path,
    *,
    prompt_tokens: int,
    new_tokens: int,
    bandwidth_gbs: float,
    gemm: dict[str, dict[str, dict[str, float]]],
    precision: str | None = None,
) -> dict[str, Any]:
    """A variant's bytes per decoded token, its decode floor and its first-token floor.

    ``gemm`` is :func:`training.evaluation.machine.gemm_throughput`'s result for the shapes of
    :func:`prefill_gemms`; ``precision`` (the card's) overrides the one read from the graph.
    """
    reads = graph_reads(graph)
    spec = folder.spec
    context = prompt_tokens + new_tokens / 2  # the mean context of the decode steps
    kv = int(2 * spec.n_layer * context * spec.n_head * spec.head_dim * reads.kv_itemsize)
    total = reads.weight_bytes + kv
    gemms = prefill_gemms(folder, prompt_tokens)
    precision = precision or reads.precision
    floors: dict[str, Any] = {
        "precision": precision,
        "weight_bytes_by_dtype": reads.weight_bytes_by_dtype,
        "kv_cache_bytes_per_token": kv,
        "kv_context_tokens": context,
        "bytes_per_token": total,
        "decode_floor_ms": total / (bandwidth_gbs * 1e9) * 1e3,
        "prefill_flops": sum(g.flops for g in gemms.values()),
    }
    measured = gemm.get(precision)
    if measured is None or not all(name in measured for name in gemms):
        floors["first_token_floor_ms"] = None
        floors["first_token_floor_missing"] = (
            f"no {precision} GEMM measured (only {', '.join(gemm) or 'none'})"
        )
    else:
        floors["first_token_floor_ms"] = sum(measured[name]["ms"] * g.count for name, g in gemms.items())
    return floors
