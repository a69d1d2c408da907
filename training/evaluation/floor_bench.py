"""How far each CPU graph of a model folder decodes from its weight-read floor, on bare steps.

``python -m training.evaluation.floor_bench MODEL_DIR`` (e.g. ``~/.cache/chatbot/bench/gpt2``,
which ``chatbot bench --config gpt2`` builds)

1. Measures this machine's read bandwidth on ``--threads`` threads, as `chatbot bench` does
   (:func:`training.evaluation.machine.read_bandwidth`: numpy over a 1 GiB buffer and ONNX
   Runtime's int8 GEMV over 256 MiB; the faster is the floor's rate).
2. Counts the bytes a decode step reads, as `chatbot bench` does
   (:func:`training.evaluation.floors.variant_floors`: every initializer by dtype, an embedding
   table one row a token, and the KV cache at the average position of the run).
3. Times the folder's CPU variants (``cpu-int8``, ``cpu-int4``, ...), interleaved in one process:
   the first token of a ``--prompt-tokens`` prompt and ``--new-tokens`` greedy decode steps at
   batch 1 on bare :meth:`~chatbot.fused.FusedSession.step` calls, without the scheduler (medians
   of ``--runs`` runs after a warm-up), and prints ms/token against the floor.

A script, not a test: timings are read on a quiet machine (take a lock where others measure too).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from chatbot.folder import ModelFolder
from chatbot.fused import FusedSession
from chatbot.loader import variant_initializers
from chatbot.versions import model_folder
from training.evaluation.floors import variant_floors
from training.evaluation.machine import read_bandwidth

MB = 1e6


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
        f"read bandwidth, {args.threads} threads: "
        + ", ".join(f"{way} {value:.1f} GB/s" for way, value in rates.items())
        + f"; the floor uses {rate:.1f} GB/s"
    )
    timed = time_variants(
        folder, variants, prompt=args.prompt_tokens, new=args.new_tokens, runs=args.runs, threads=args.threads
    )
    print("| variant | bytes read a token | floor ms | decode ms/token | × floor | first token ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in variants:
        floors = variant_floors(
            folder,
            folder.variant_path(name),
            prompt_tokens=args.prompt_tokens,
            new_tokens=args.new_tokens,
            bandwidth_gbs=rate,
            gemm={},
        )
        figures = timed[name]
        print(
            f"| {name} | {floors['bytes_per_token'] / MB:.1f} MB | {floors['decode_floor_ms']:.2f} | "
            f"{figures['decode_ms']:.2f} | {figures['decode_ms'] / floors['decode_floor_ms']:.2f}× | "
            f"{figures['first_token_ms']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
