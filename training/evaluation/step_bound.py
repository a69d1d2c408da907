"""What the served graph allows N conversations at once: the bound `chatbot bench` holds the
scheduler's tokens/s against (the ``graph`` entry of its ``ours.scaling``).

The CPU scheduler prefills each prompt alone into a slot and steps every reply in progress
together (:mod:`chatbot.scheduler`). N replies of ``new_tokens`` tokens to one prompt therefore
cost at least N prefills and ``new_tokens - 1`` steps of N rows, whatever the scheduler does
around them. Batching prompts together would not lower that here: a 128-token prompt's GEMMs
already run near the machine's int8 peak (on GPT-2 124M, AMD EPYC with VNNI, 2 threads, 4
prompts in one step took 22 ms each, 8 took 23, one alone 23).

So the bound is ``N · new / (N · prefill + (new - 1) · step(N))``, each time measured on bare
:meth:`~chatbot.fused.FusedSession.step` calls: the prompt's prefill on the graph that prefills
(int8 for int4, as the scheduler does), and an N-row decode step at the replies' mean context
(the prompt and half the reply: attention reads every row's keys and values, so a step's cost
grows with it). The scheduler's tokens/s over this bound is its own efficiency; the bound for N
over the bound for one says how far the graph itself lets N conversations go. Speed is measured
here and in `chatbot bench`, never in a test.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from chatbot.folder import ModelFolder
from chatbot.fused import FusedSession, Prefiller
from chatbot.loader import load_generator
from chatbot.scheduler import BatchingGenerator
from training.evaluation.rounds import against_base

RUNS = 7  # each time is the median of this many (interleaved), after one untimed run


@dataclass(frozen=True)
class StepBound:
    """A prompt's prefill and an N-row decode step, bare, and the tokens/s they allow."""

    prefill_ms: float
    step_ms: dict[int, float]  # by rows, at the replies' mean context
    context: int  # the positions each row's step attended over
    new_tokens: int

    def tokens_per_s(self, n: int) -> float:
        seconds = (n * self.prefill_ms + (self.new_tokens - 1) * self.step_ms[n]) / 1000
        return n * self.new_tokens / seconds

    def to_dict(self) -> dict[str, Any]:
        rates = {n: self.tokens_per_s(n) for n in self.step_ms}
        return {
            "prefill_ms": self.prefill_ms,
            "step_ms": self.step_ms,
            "context": self.context,
            "tokens_per_s": rates,
            **against_base(rates),
        }


def measure_step_bound(
    decode: FusedSession,
    prefill: Prefiller,
    prompt: Sequence[int],
    new_tokens: int,
    rows: Sequence[int],
    *,
    runs: int = RUNS,
) -> StepBound:
    """Time ``prompt``'s prefill on ``prefill`` and a decode step of each of ``rows`` rows on
    ``decode`` at the mean context, over a cache of their own (see the module docstring). The
    runs are interleaved (a prefill, then each step, ``runs`` times): on a machine whose speed
    drifts, all of them see the same minutes, as the bound divides one by the other."""
    most = max(rows)
    context = len(prompt) + new_tokens // 2
    cache = decode.new_cache(most, len(prompt) + new_tokens)
    ids = [list(prompt)]

    def prefill_once() -> None:  # writes the prompt's positions only: the steps write past them
        prefill.step(cache, 0, ids, [0])

    prefill_once()  # untimed: first-run allocations
    for row in range(1, most):  # every row holds the prompt's keys and values
        cache.move(0, row, len(prompt))
    timed: dict[str | int, Callable[[], object]] = {"prefill": prefill_once}
    for n in sorted(set(rows)):
        tokens = np.full((n, 1), prompt[-1], dtype=np.int64)
        starts = np.full(n, context, dtype=np.int64)
        timed[n] = partial(decode.step, cache, 0, tokens, starts)
        timed[n]()  # untimed
    times: dict[str | int, list[float]] = {name: [] for name in timed}
    for _ in range(runs):
        for name, run in timed.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    ms = {name: statistics.median(values) * 1000 for name, values in times.items()}
    step_ms = {n: ms[n] for n in sorted(set(rows))}
    return StepBound(ms["prefill"], step_ms, context + 1, new_tokens)


def served_step_bound(
    path: Path, variant: str, prompt: list[int], new_tokens: int, rows: list[int]
) -> dict[str, Any]:
    """:func:`measure_step_bound` on the graphs the engine serves ``variant`` of the folder at
    ``path`` with (meant for a child process: its own sessions, threads and cache)."""
    generator = load_generator(ModelFolder(path), device="cpu", variant=variant, max_batch=max(rows))
    if not isinstance(generator, BatchingGenerator):  # the reference export: one reply at a time
        return {"missing": f"{variant} is served without the batching scheduler"}
    return measure_step_bound(
        generator.session, generator.prefill_session, prompt, new_tokens, rows
    ).to_dict()
