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
over the bound for one says how far the graph itself lets N conversations go. Each N steps a
cache of its own, several steps in a row after a few untimed ones, as a reply's steps follow each
other: one cache shared by every N rebound it at each step, and one row's first few steps after
32 rows' ran ~15 % slower, which made one row look slower than it decodes (4.4-4.7 ms a step
against 3.8-4.1 through the scheduler) and the bound for 32 conversations too generous.

Where an N-row step's time goes: the same steps on a copy of the decode graph whose attention is
taken out (:func:`without_attention`) give ``attention_ms``, the step's time minus that copy's.
ONNX Runtime's CPU attention over an int8 cache (GroupQueryAttention) was 40-50 % of a 32-row
step at 161 positions on GPT-2 124M (AMD EPYC, VNNI, 2 threads: ~9 of ~19.5 ms), against ~2 ms
for reading those keys and values at the machine's bandwidth; the weights' GEMMs at 32 rows ran
at ~80 % of the int8 peak. That kernel was what limited N conversations; the native attention
(:mod:`chatbot.kernels`, which the served graph runs where it builds) took it to ~21 % (~2.9 of
~13.5 ms).
Speed is measured here and in `chatbot bench`, never in a test.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from chatbot.folder import ModelFolder
from chatbot.fused import FusedSession, KVCache, Prefiller
from chatbot.kernels import cache_head_size
from chatbot.loader import load_generator
from chatbot.scheduler import BatchingGenerator
from training.evaluation.rounds import against_base

RUNS = 7  # rounds: each times the prefill, then STEADY steps of each N in a row (after WARM untimed)
WARM = 4  # after another N's steps, the first three or four of one row ran ~15 % slower (4.6 against 4.1 ms)
STEADY = 4  # a step's time is the median of RUNS * STEADY, each N on its own cache (bound once)


@dataclass(frozen=True)
class StepBound:
    """A prompt's prefill and an N-row decode step, bare, and the tokens/s they allow."""

    prefill_ms: float
    step_ms: dict[int, float]  # by rows, at the replies' mean context
    context: int  # the positions each row's step attended over
    new_tokens: int
    attention_ms: dict[int, float] | None = None  # by rows: the step less the step without attention

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
            **({"attention_ms": self.attention_ms} if self.attention_ms is not None else {}),
        }


def measure_step_bound(
    decode: FusedSession,
    prefill: Prefiller,
    prompt: Sequence[int],
    new_tokens: int,
    rows: Sequence[int],
    *,
    runs: int = RUNS,
    bare: FusedSession | None = None,
) -> StepBound:
    """Time ``prompt``'s prefill on ``prefill`` and a decode step of each of ``rows`` rows on
    ``decode`` at the mean context (see the module docstring); with ``bare`` (the decode graph
    without its attention, :func:`without_attention`) the same steps on it too. The runs are
    interleaved (a prefill, then each N's steps, ``runs`` times): on a machine whose speed
    drifts, all of them see the same minutes, as the bound divides one by the other."""
    context = len(prompt) + new_tokens // 2
    length = len(prompt) + new_tokens
    ids = [list(prompt)]
    scratch = decode.new_cache(1, length)
    steps: dict[int | tuple[str, int], Callable[[], list[float]]] = {}
    for n in sorted(set(rows)):
        tokens = np.full((n, 1), prompt[-1], dtype=np.int64)
        starts = np.full(n, context, dtype=np.int64)
        steps[n] = partial(_steps, decode, _prompt_cache(decode, prefill, ids, n, length), tokens, starts)
        if bare is not None:  # a cache of its own too: the two graphs' bindings stay
            steps[("bare", n)] = partial(_steps, bare, bare.new_cache(n, length), tokens, starts)
    prefill.step(scratch, 0, ids, [0])  # untimed: first-run allocations
    for run in steps.values():
        run()
    prefills: list[float] = []
    times: dict[int | tuple[str, int], list[float]] = {name: [] for name in steps}
    for _ in range(runs):
        started = time.perf_counter()
        prefill.step(scratch, 0, ids, [0])
        prefills.append(time.perf_counter() - started)
        for name, run in steps.items():
            times[name].extend(run())
    ms = {name: statistics.median(values) * 1000 for name, values in times.items()}
    step_ms = {n: ms[n] for n in sorted(set(rows))}
    attention = {n: step_ms[n] - ms[("bare", n)] for n in step_ms} if bare is not None else None
    return StepBound(statistics.median(prefills) * 1000, step_ms, context + 1, new_tokens, attention)


def _prompt_cache(
    decode: FusedSession, prefill: Prefiller, ids: list[list[int]], rows: int, length: int
) -> KVCache:
    """A cache of ``rows`` rows, each holding the prompt's keys and values."""
    cache = decode.new_cache(rows, length)
    prefill.step(cache, 0, ids, [0])
    for row in range(1, rows):
        cache.move(0, row, len(ids[0]))
    return cache


def _steps(session: FusedSession, cache: KVCache, tokens: np.ndarray, starts: np.ndarray) -> list[float]:
    """Seconds of :data:`STEADY` steps in a row over ``cache``, after :data:`WARM` untimed ones,
    as a reply's steps follow each other (each rewrites the same position)."""
    for _ in range(WARM):
        session.step(cache, 0, tokens, starts)
    seconds = []
    for _ in range(STEADY):
        started = time.perf_counter()
        session.step(cache, 0, tokens, starts)
        seconds.append(time.perf_counter() - started)
    return seconds


def without_attention(graph: Path, target: Path) -> Path:
    """A copy of the fused decode graph ``graph`` at ``target`` whose every GroupQueryAttention
    passes its queries through (the first third of the packed projection) and leaves the cache
    as it is: the same step with the attention's work taken out, to time it against the
    graph (its replies mean nothing)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(graph))
    nodes = []
    bounds: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type != "GroupQueryAttention":
            nodes.append(node)
            continue
        heads = next(a.i for a in node.attribute if a.name == "num_heads")
        hidden = heads * cache_head_size(model, node.input[3])
        bounds.setdefault(f"bare.{hidden}", hidden)
        query = [node.input[0], "bare.zero", f"bare.{hidden}", "bare.axis"]
        nodes.append(helper.make_node("Slice", query, [node.output[0]], name=f"{node.name}.bare"))
        for cached, present in zip(node.input[3:5], node.output[1:3], strict=True):  # bound in place
            nodes.append(helper.make_node("Identity", [cached], [present], name=f"{present}.bare"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    constants = {"bare.zero": 0, "bare.axis": 2, **bounds}
    for name, value in constants.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([value], dtype=np.int64), name))
    onnx.save(model, str(target))
    return target


def served_step_bound(
    path: Path, variant: str, prompt: list[int], new_tokens: int, rows: list[int]
) -> dict[str, Any]:
    """:func:`measure_step_bound` on the graphs the engine serves ``variant`` of the folder at
    ``path`` with (meant for a child process: its own sessions, threads and cache)."""
    folder = ModelFolder(path)
    generator = load_generator(folder, device="cpu", variant=variant, max_batch=max(rows))
    if not isinstance(generator, BatchingGenerator):  # the reference export: one reply at a time
        return {"missing": f"{variant} is served without the batching scheduler"}
    decode = generator.session
    threads = decode.session.get_session_options().intra_op_num_threads or None
    with tempfile.TemporaryDirectory(prefix="chatbot-bare-") as scratch:
        graph = without_attention(decode.path, Path(scratch) / "model.onnx")
        # what the served session was given at load (an AVX2 CPU's activation range: chatbot.cpu)
        loaded = getattr(decode.session, "chatbot_initializers", {})
        initializers = {name: value.numpy() for name, value in loaded.items()}
        # no attention left in it: nothing for chatbot.kernels to look for
        bare = FusedSession(
            graph, folder.spec, threads=threads, initializers=initializers, native_attention=False
        )
        bound = measure_step_bound(decode, generator.prefill_session, prompt, new_tokens, rows, bare=bare)
        return {**bound.to_dict(), "attention": decode.attention}
