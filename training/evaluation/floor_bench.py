"""How far each CPU graph of a model folder decodes from its weight-read floor.

``python -m training.evaluation.floor_bench MODEL_DIR`` (e.g. ``~/.cache/chatbot/bench/gpt2``,
which ``chatbot bench --config gpt2`` builds)

1. Measures this machine's read bandwidth with ONNX Runtime, on ``--threads`` threads: a
   ``ReduceMax`` over 256 MB of floats, and its int8 GEMV (``MatMulIntegerToFloat``) over a
   154 MB weight; the faster is the floor's rate.
2. Counts the bytes a decode step reads: every MatMul weight and scale of the graph (the
   embedding tables are left out: a Gather reads one row of them) and the KV cache at the
   average position of the run.
3. Times the folder's CPU variants (``cpu-int8``, ``cpu-int4``, ...), interleaved in one process:
   the first token of a ``--prompt-tokens`` prompt and ``--new-tokens`` greedy decode steps at
   batch 1 (medians of ``--runs`` runs after a warm-up), and prints ms/token against the floor.

A script, not a test: timings are read on a quiet machine (take a lock where others measure too).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from chatbot.folder import ModelFolder
from chatbot.fused import FusedSession
from chatbot.loader import variant_initializers
from chatbot.versions import model_folder

MB = 1e6


def _best_seconds(run: Callable[[], Any], repeats: int = 10) -> float:
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def _session(model: Any, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def read_bandwidth(threads: int) -> dict[str, float]:
    """GB/s read by ONNX Runtime: a float ReduceMax over 256 MB and an int8 GEMV over 154 MB."""
    from onnx import TensorProto, helper

    def model(nodes: list[Any], inputs: list[Any], output: Any, weights: list[Any]) -> Any:
        graph = helper.make_graph(nodes, "read", inputs, [output], weights)
        opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
        built = helper.make_model(graph, opset_imports=opsets)
        built.ir_version = 10
        return built

    floats = np.ones(64 * 2**20, dtype=np.float32)
    reduce = model(
        [helper.make_node("ReduceMax", ["x"], ["y"], keepdims=0)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
        [],
    )
    session = _session(reduce, threads)
    reduce_rate = floats.nbytes / _best_seconds(lambda: session.run(None, {"x": floats})) / 1e9
    k, n = 3072, 50257  # 154 MB: far beyond any cache
    weight = np.random.default_rng(0).integers(-127, 128, size=(k, n), dtype=np.int8)
    gemv = model(
        [
            helper.make_node(
                "MatMulIntegerToFloat", ["x", "w", "one", "s", "z"], ["y"], domain="com.microsoft"
            )
        ],
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, k])],
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n]),
        [
            helper.make_tensor("w", TensorProto.INT8, weight.shape, weight.tobytes(), raw=True),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
            helper.make_tensor("s", TensorProto.FLOAT, [n], np.ones(n, np.float32)),
            helper.make_tensor("z", TensorProto.UINT8, [], [128]),
        ],
    )
    session = _session(gemv, threads)
    row = np.full((1, k), 130, dtype=np.uint8)
    gemv_rate = weight.nbytes / _best_seconds(lambda: session.run(None, {"x": row})) / 1e9
    return {"reduce_max_gb_s": reduce_rate, "int8_gemv_gb_s": gemv_rate}


def weight_bytes(path: Path) -> int:
    """The bytes of the MatMul weights and scales a decode step reads (not the embedding tables)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return sum(
        numpy_helper.to_array(tensor).nbytes
        for tensor in model.graph.initializer
        if tensor.name.endswith((".weight", ".weight.scale")) and tensor.name not in ("wte", "wpe")
    )


def time_variants(
    folder: ModelFolder, variants: list[str], *, prompt: int, new: int, runs: int, threads: int
) -> dict[str, dict[str, float]]:
    """Median first-token ms and decode ms/token of each variant, the variants interleaved."""
    sessions = {
        v: FusedSession(
            folder.variant_path(v), folder.spec, threads=threads, initializers=variant_initializers(folder, v)
        )
        for v in variants
    }
    ids = np.random.default_rng(0).integers(0, folder.spec.vocab_size, size=prompt).tolist()
    times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    for run in range(runs + 1):  # the first is the warm-up
        for name, session in sessions.items():
            cache = session.new_cache(1, prompt + new + 1)
            started = time.perf_counter()
            token = int(session.step(cache, 0, [ids], [0]).next_token[0])
            prefilled = time.perf_counter()
            for position in range(prompt, prompt + new):
                token = int(session.step(cache, 0, [[token]], [position]).next_token[0])
            if run:
                done = time.perf_counter()
                times[name].append(((prefilled - started) * 1e3, (done - prefilled) * 1e3 / new))
    return {
        name: {
            "first_token_ms": statistics.median(t[0] for t in pairs),
            "decode_ms": statistics.median(t[1] for t in pairs),
        }
        for name, pairs in times.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.floor_bench", description=__doc__)
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    folder = model_folder(args.model_dir)
    variants = [v for v in folder.variants if v.startswith("cpu-")]
    rates = read_bandwidth(args.threads)
    rate = max(rates.values())
    print(
        f"read bandwidth, {args.threads} threads: ReduceMax {rates['reduce_max_gb_s']:.1f} GB/s, "
        f"int8 GEMV {rates['int8_gemv_gb_s']:.1f} GB/s; the floor uses {rate:.1f} GB/s"
    )
    spec = folder.spec
    positions = args.prompt_tokens + args.new_tokens / 2  # the average a decode step attends over
    kv_bytes = 2 * spec.n_layer * spec.n_head * spec.head_dim * positions * 4  # float32 keys and values
    timed = time_variants(
        folder, variants, prompt=args.prompt_tokens, new=args.new_tokens, runs=args.runs, threads=args.threads
    )
    print("| variant | bytes read a token | floor ms | decode ms/token | × floor | first token ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in variants:
        read = weight_bytes(folder.variant_path(name)) + kv_bytes
        floor_ms = read / (rate * 1e9) * 1e3
        figures = timed[name]
        print(
            f"| {name} | {read / MB:.1f} MB | {floor_ms:.2f} | {figures['decode_ms']:.2f} | "
            f"{figures['decode_ms'] / floor_ms:.2f}× | {figures['first_token_ms']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
