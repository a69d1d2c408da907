"""Interleaved timing for `chatbot bench`: every side runs once per round, round after round.

On a shared machine whose speed swings, one side timed after the other measures the machine's
mood as much as the code: two idle runs back to back gave ours 2.6× and 5.3× transformers. Here
each round times one reply of every side (ours, each other variant, CTranslate2, transformers)
back to back, so a slow minute slows all of them; a round's ratio is paired, and the bench
reports the median of the rounds' ratios with their middle half (interquartile range).

Every side's reply is streamed and timed the same way: the time to its first token (the
prompt's prefill and the first pick, as a person waiting sees it), then the rest of the reply
divided by its tokens.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from chatbot.types import Progress

Reply = Callable[[], tuple[float, float, int]]  # one streamed reply: (first token s, total s, tokens)
Batch = Callable[[int], tuple[int, float]]  # n replies at once: (tokens, seconds)


@dataclass
class Contender:
    """One side of the rounds: how to time one reply, and (optionally) n replies at once."""

    key: str  # "ours", a variant's name, "ctranslate2", "transformers", ...
    name: str  # as the tables print it
    reply: Reply
    batch: Batch | None = None  # None: measured at batch 1 only
    on_torch: bool = False  # torch keeps its threads; for the others it gets one (see _quiet_torch)
    compiles_per_batch: bool = False  # a new batch size compiles first (transformers' static cache)
    variant: str | None = None  # ours: the graph it runs
    attention: str | None = None  # ours: "native" or "onnxruntime" (chatbot.kernels), None where it has none
    peak_rss_mib: float = 0.0  # the process's high-water mark once this side was loaded and warm
    firsts: list[float] = field(default_factory=list)  # seconds, one per round
    decodes: list[float] = field(default_factory=list)  # seconds per token, one per round
    counts: list[int] = field(default_factory=list)
    rates: dict[int, list[float]] = field(default_factory=dict)  # tokens/s per round, by n
    bandwidths: list[float] = field(default_factory=list)  # GB/s around each reply (ours, probed)

    def time_reply(self) -> tuple[float, float, int]:
        with self.quiet():
            return self.reply()

    def time_batch(self, n: int) -> float:
        assert self.batch is not None
        with self.quiet():
            tokens, seconds = self.batch(n)
        return tokens / seconds

    def quiet(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if self.on_torch else quiet_torch()


def run_rounds(
    contenders: list[Contender], runs: int, progress: Progress, probe: Callable[[], float] | None = None
) -> list[float]:
    """``runs`` rounds of one reply each, all sides in turn (warmed up before, by their loader).

    With a ``probe`` (the machine's read bandwidth, :class:`~training.evaluation.machine.
    BandwidthProbe`): what it measures at the start of each round, one figure a round (returned),
    and for each of our graphs (a side with a ``variant``) the mean of what it measures just
    before and just after each reply (``Contender.bandwidths``). This VM's bandwidth swings within
    seconds (45 to 74 GB/s between the rounds of one run), so a decode is held against what the
    memory gave in its own second, not at the round's start, before other sides ran."""
    probed: list[float] = []
    for round_ in range(runs):
        progress(f"round {round_ + 1} of {runs}: {', '.join(c.key for c in contenders)}")
        start = probe() if probe is not None else None
        if start is not None:
            probed.append(start)
        for index, contender in enumerate(contenders):
            if probe is None or contender.variant is None:
                _time_reply(contender)
                continue
            # the first side's "before" is the round's figure, taken just now
            before = start if index == 0 and start is not None else probe()
            _time_reply(contender)
            contender.bandwidths.append((before + probe()) / 2)
    return probed


def _time_reply(contender: Contender) -> None:
    first, total, count = contender.time_reply()
    contender.firsts.append(first)
    contender.decodes.append((total - first) / max(1, count - 1))
    contender.counts.append(count)


def run_batch_rounds(
    contenders: list[Contender], counts: tuple[int, ...], runs: int, progress: Progress
) -> None:
    """``runs`` rounds, each timing n replies at once for every n of ``counts``, the sides in turn.

    Every n runs in every round, so N conversations and one are timed in the same minutes: on a
    machine whose memory speed swings from one minute to the next, one conversation's decode
    (bandwidth-bound) moves more than 32's (half compute), and blocks of rounds per n made their
    ratio a matter of which minute each block fell in (:func:`paired_against_base`)."""
    batching = [c for c in contenders if c.batch is not None]
    for contender in batching:
        for n in counts:
            if contender.compiles_per_batch:
                contender.time_batch(n)  # compiles: not timed
            contender.rates[n] = []
    for round_ in range(runs):
        progress(
            f"round {round_ + 1} of {runs}, {', '.join(map(str, counts))} conversations at once: "
            f"{', '.join(c.key for c in batching)}"
        )
        for n in counts:
            for contender in batching:
                contender.rates[n].append(contender.time_batch(n))


def against_base(rates: dict[int, float]) -> dict[str, Any]:
    """Tokens/s by conversations at once, each against one conversation's (or the fewest's):
    ``base`` and ``vs_base``."""
    base = 1 if 1 in rates else min(rates)
    return {"base": base, "vs_base": {n: rate / rates[base] for n, rate in rates.items()}}


def paired_against_base(rates: dict[int, list[float]]) -> dict[str, Any]:
    """Tokens/s by conversations at once against one conversation's (or the fewest's), round by
    round (the lists are aligned by round: :func:`run_batch_rounds`): ``vs_base`` the median of
    each round's ratio and ``vs_base_iqr`` its middle half."""
    base = 1 if 1 in rates else min(rates)
    paired = {n: [r / b for r, b in zip(values, rates[base], strict=True)] for n, values in rates.items()}
    spreads = {n: spread(values) for n, values in paired.items()}
    return {
        "base": base,
        "vs_base": {n: s["median"] for n, s in spreads.items()},
        "vs_base_iqr": {n: [s["q1"], s["q3"]] for n, s in spreads.items()},
    }


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles (the middle half lies between q1 and q3), least and most."""
    ordered = sorted(values)
    q1, q3 = statistics.quantiles(ordered, n=4, method="inclusive")[::2] if len(ordered) > 1 else ordered * 2
    return {
        "median": statistics.median(ordered),
        "q1": q1,
        "q3": q3,
        "min": ordered[0],
        "max": ordered[-1],
    }


def figures(contender: Contender) -> dict[str, Any]:
    """A side's medians and spreads (ms), and its tokens/s by n (medians, with their spreads)."""
    firsts = [s * 1e3 for s in contender.firsts]
    decodes = [s * 1e3 for s in contender.decodes]
    return {
        "first_token_ms": statistics.median(firsts),
        "decode_ms_per_token": statistics.median(decodes),
        "tokens": min(contender.counts),
        "spread": {"first_token_ms": spread(firsts), "decode_ms_per_token": spread(decodes)},
        "runs": {"first_token_ms": firsts, "decode_ms_per_token": decodes},
        "tokens_per_s": {n: statistics.median(rates) for n, rates in contender.rates.items()},
        "tokens_per_s_spread": {n: spread(rates) for n, rates in contender.rates.items()},
    }


def paired_ratios(ours: Contender, other: Contender) -> dict[str, Any]:
    """Other / ours for times and ours / other for tokens/s, round by round: above 1 means ours
    is faster. Medians, with the rounds' interquartile range."""
    first = [o / u for o, u in zip(other.firsts, ours.firsts, strict=True)]
    decode = [o / u for o, u in zip(other.decodes, ours.decodes, strict=True)]
    rates = {
        n: [u / o for u, o in zip(ours.rates[n], other.rates[n], strict=True)]
        for n in other.rates
        if n in ours.rates
    }
    return {
        "first_token": statistics.median(first),
        "decode": statistics.median(decode),
        "first_token_iqr": iqr(first),
        "decode_iqr": iqr(decode),
        "tokens_per_s": {n: statistics.median(values) for n, values in rates.items()},
        "tokens_per_s_iqr": {n: iqr(values) for n, values in rates.items()},
    }


def iqr(values: list[float]) -> list[float]:
    figures = spread(values)
    return [figures["q1"], figures["q3"]]


def timed_stream(start: Callable[[], Iterator[Any]]) -> tuple[float, float, int]:
    """(first token s, total s, tokens) of the stream ``start()`` returns."""
    started = time.perf_counter()
    first = 0.0
    count = 0
    for _ in start():
        count += 1
        if count == 1:
            first = time.perf_counter() - started
    return first, time.perf_counter() - started, count


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """One torch thread while another runtime runs, when torch is loaded at all: its idle OpenMP
    threads would otherwise spin on the same cores (see CPU.md's thread fight)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
