"""What the scheduler costs over a bare step loop: ``python -m training.evaluation.scheduler_cost MODEL_DIR``.

The same fused graph (one session) decodes the same random prompt greedily two ways, interleaved
round by round: a bare :meth:`~chatbot.fused.FusedSession.step` loop on the calling thread, and
:class:`~chatbot.scheduler.BatchingGenerator` (its own thread, tokens handed over through a
queue). Printed: the medians of the first token and of decode ms/token, each way, and where the
scheduler's first token went (the caller's request reaching the scheduler thread, the prefill,
the token reaching the caller). ``--threads N`` sets ONNX Runtime's intra-op threads (its default
is the number of physical cores: one on a two-vCPU machine whose vCPUs are one core's two
hyperthreads); ``--variant`` another graph than the served one. Speed is measured here, never in a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from chatbot.folder import ModelFolder
from chatbot.fused import FusedSession, StepResult
from chatbot.loader import choose_variant
from chatbot.scheduler import BatchingGenerator
from chatbot.types import GenerationConfig
from chatbot.versions import model_folder

Timing = tuple[float, float, list[int]]  # first token s, decode s/token, the tokens


def bare_loop(session: FusedSession, prompt: list[int], new_tokens: int) -> Callable[[], Timing]:
    """A reply by plain steps over one cache (allocated once, as the scheduler's is)."""
    cache = session.new_cache(1, len(prompt) + new_tokens)

    def run() -> Timing:
        started = time.perf_counter()
        token = int(session.step(cache, 0, [prompt], [0]).next_token[0])
        first = time.perf_counter() - started
        tokens = [token]
        for position in range(len(prompt), len(prompt) + new_tokens - 1):
            token = int(session.step(cache, 0, [[token]], [position]).next_token[0])
            tokens.append(token)
        return first, (time.perf_counter() - started - first) / (new_tokens - 1), tokens

    return run


class _Marks:
    """Times of the scheduler's prefill steps, read by wrapping the session's ``step``."""

    def __init__(self, session: FusedSession) -> None:
        self.prefill: tuple[float, float] = (0.0, 0.0)
        step = session.step

        def timed(*args: Any, **kwargs: Any) -> StepResult:
            started = time.perf_counter()
            result = step(*args, **kwargs)
            if np.asarray(args[2]).shape[1] > 1:  # more than one token a row: a prefill
                self.prefill = (started, time.perf_counter())
            return result

        session.step = timed  # type: ignore[method-assign]


def scheduled(
    generator: BatchingGenerator, marks: _Marks, prompt: list[int], new_tokens: int, parts: list[list[float]]
) -> Callable[[], Timing]:
    """A reply through the scheduler; each run appends its first token's parts to ``parts``."""
    config = GenerationConfig(max_new_tokens=new_tokens)

    def run() -> Timing:
        started = time.perf_counter()
        stream: Iterator[Any] = iter(generator.generate(prompt, config))
        tokens = [next(stream).id]
        first = time.perf_counter() - started
        begun, ended = marks.prefill
        parts.append([begun - started, ended - begun, started + first - ended])
        tokens.extend(token.id for token in stream)
        return first, (time.perf_counter() - started - first) / (new_tokens - 1), tokens

    return run


def measure(
    folder: ModelFolder,
    *,
    prompt_tokens: int,
    new_tokens: int,
    rounds: int,
    threads: int | None,
    variant: str | None = None,
) -> dict[str, Any]:
    variant = choose_variant(folder, "cpu", variant)
    session = FusedSession(folder.variant_path(variant), folder.spec, threads=threads)
    prompt = np.random.default_rng(0).integers(0, folder.spec.vocab_size, prompt_tokens).tolist()
    generator = BatchingGenerator(session, stop_token_ids=())
    parts: list[list[float]] = []
    sides = {
        "bare": bare_loop(session, prompt, new_tokens),
        "scheduler": scheduled(generator, _Marks(session), prompt, new_tokens, parts),
    }
    for run in sides.values():  # warm-up
        run()
    parts.clear()
    timings: dict[str, list[Timing]] = {name: [] for name in sides}
    for round_ in range(rounds):
        order = list(sides.items())
        for name, run in order[:: -1 if round_ % 2 else 1]:
            timings[name].append(run())
        if timings["bare"][-1][2] != timings["scheduler"][-1][2]:
            raise RuntimeError("the scheduler's reply differs from the bare loop's")
    found: dict[str, Any] = {"variant": variant, "threads": threads or "ONNX Runtime's default"}
    for name, runs in timings.items():
        found[name] = {
            "first_token_ms": statistics.median(run[0] for run in runs) * 1e3,
            "decode_ms_per_token": statistics.median(run[1] for run in runs) * 1e3,
        }
    labels = ("request to prefill", "prefill", "prefill to the caller")
    found["scheduler_first_token_parts_ms"] = {
        label: statistics.median(part[i] for part in parts) * 1e3 for i, label in enumerate(labels)
    }
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variant", default=None, help="the graph (default: the one the engine serves)")
    args = parser.parse_args(argv)
    folder = model_folder(args.model_dir)
    found = measure(
        folder,
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        rounds=args.rounds,
        threads=args.threads,
        variant=args.variant,
    )
    print(
        f"{folder.path.name} {found['variant']}, threads: {found['threads']}, medians of {args.rounds} rounds"
    )
    for name in ("bare", "scheduler"):
        side = found[name]
        print(
            f"  {name:9s} first token {side['first_token_ms']:8.2f} ms   "
            f"decode {side['decode_ms_per_token']:7.3f} ms/token"
        )
    parts = ", ".join(f"{label} {ms:.3f} ms" for label, ms in found["scheduler_first_token_parts_ms"].items())
    print(f"  the scheduler's first token: {parts}")


if __name__ == "__main__":
    main()
