"""What speculative decoding buys: the same greedy replies with drafts and without, at batch 1.

``chatbot bench`` measures it twice and reports the two apart: on real text (``--data``: the
model's replies to held-out conversations, each agent turn's prompt being the conversation
before it) and on the bench's random prompt. Random weights repeat themselves, which flatters
drafts taken from the conversation; only the real-text figure says what customers get.

Each round runs every prompt's reply without drafts and with them (the order alternating), on
new generators: the bot's recent replies that drafts also come from start empty each round and
fill with the earlier prompts' replies, as a server's would. The figures are the medians over
rounds of the decode time per token (after the first token) summed over all prompts, and the
median of the rounds' speed-ups. Where a drafted reply differs from the plain one, the result
says where (``first_difference``) instead of failing the run: on a quantised graph a step of
several positions computes attention in another order, and that float rounding can move a
near-tie (README, "Speculative decoding").

>>> measure_speculative(folder, prompts, draft_tokens=6, rounds=3)  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from chatbot.drafting import DRAFTS_FILE
from chatbot.folder import ModelFolder
from chatbot.fused import FusedSession
from chatbot.loader import choose_variant, draft_positions, variant_initializers
from chatbot.scheduler import BatchingGenerator
from chatbot.settings import SUGGESTED_DRAFT_TOKENS
from chatbot.types import GenerationConfig, Progress

MIN_SECONDS = 10.0  # rounds go on until they took this long (both sides), at least the rounds asked
MAX_ROUNDS = 25
TOGETHER = 4  # greedy replies at once for the figure of replies drafting together


def held_out_prompts(folder: ModelFolder, data: Sequence[str], *, limit: int = 200) -> list[list[int]]:
    """The prompt of every agent turn of ``data``'s conversations (up to ``limit``), rendered as
    the engine renders a conversation (with the model's trained system prompt, if any)."""
    from training.transcripts.prepare import load_conversations

    prompts = []
    system = [{"role": "system", "content": folder.system_prompt}] if folder.system_prompt else []
    for transcript in load_conversations(data).transcripts:
        messages = [*system]
        for turn in transcript.turns:
            if turn.role == "assistant" and messages and messages[-1]["role"] == "user":
                prompts.append(folder.encode(folder.template.render(messages, add_generation_prompt=True)))
            messages.append({"role": turn.role, "content": turn.content})
    window = folder.spec.n_positions // 2  # room left for the reply
    return [prompt for prompt in prompts if len(prompt) <= window][:limit]


def measure_speculative(
    folder: ModelFolder,
    prompts: list[list[int]],
    *,
    new_tokens: int = 64,
    draft_tokens: int = SUGGESTED_DRAFT_TOKENS,
    rounds: int = 3,
    min_seconds: float = MIN_SECONDS,
    stop: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Greedy decode of ``prompts`` one at a time with and without drafts (the CPU variant the
    engine serves); the acceptance rate, ms per token each way and the speed-up.

    At least ``rounds`` rounds, and more (up to :data:`MAX_ROUNDS`) until they took
    ``min_seconds``: a small model's round takes a fraction of a second, and its speed-up moved
    from 1.26x to 1.66x between runs of 5 rounds; a large model's few rounds are long enough."""
    variant, session = served_session(folder)
    if not session.scores_drafts:
        return {"missing": f"{variant} predates speculative decoding: run `chatbot export` again"}
    stops = folder.stop_token_ids if stop else ()
    config = GenerationConfig(max_new_tokens=new_tokens)
    say = progress or (lambda message: None)
    say(f"speculative decoding: {len(prompts)} prompts, with and without drafts, {rounds}+ rounds")

    def generator(drafts: int) -> BatchingGenerator:
        # a new one each round: the bot's recent replies it drafts from must not hold these prompts' replies
        return BatchingGenerator(
            session, stop_token_ids=stops, max_batch=1, draft_tokens=drafts, drafts=folder.drafts
        )

    for warm_up in (generator(0), generator(draft_tokens)):
        _decode(warm_up, prompts[:3], config)
    times: dict[str, list[float]] = {"plain": [], "drafting": []}
    drafted = accepted = steps = tokens = 0
    differ: tuple[int, int] | None = None  # (reply, token) where drafting first changed a pick
    for round_ in _rounds(rounds, min_seconds):
        order = [("plain", generator(0)), ("drafting", generator(draft_tokens))][:: -1 if round_ % 2 else 1]
        replies = {}
        for name, running in order:
            replies[name], seconds, tokens = _decode(running, prompts, config)
            times[name].append(seconds)
            drafted, accepted = drafted + running.drafted_tokens, accepted + running.accepted_tokens
            steps += running.verify_steps
        differ = differ or _first_difference(replies["plain"], replies["drafting"])
    plain_ms = statistics.median(times["plain"]) / tokens * 1e3
    drafting_ms = statistics.median(times["drafting"]) / tokens * 1e3
    return {
        "variant": variant,
        # where drafts came from: the model's training replies first, when the folder has their table
        "drafted_from": (
            f"{DRAFTS_FILE} ({len(folder.drafts)} contexts), then the conversation and recent replies"
            if folder.drafts is not None
            else f"the conversation and recent replies (no {DRAFTS_FILE})"
        ),
        "prompts": len(prompts),
        "rounds": round_ + 1,
        "decode_tokens": tokens,
        "draft_tokens": draft_tokens,
        "acceptance": accepted / max(1, drafted),
        "tokens_per_step": 1 + accepted / max(1, steps),
        "plain_ms_per_token": plain_ms,
        "drafting_ms_per_token": drafting_ms,
        # each round's own ratio (its two halves ran back to back), then their median: steadier
        # than a ratio of medians while other work comes and goes on the machine
        "speedup": statistics.median(p / d for p, d in zip(times["plain"], times["drafting"], strict=True)),
        "identical": differ is None,
        "first_difference": differ,
    }


def measure_together(
    folder: ModelFolder,
    prompts: list[list[int]],
    *,
    replies: int = TOGETHER,
    new_tokens: int = 64,
    draft_tokens: int = SUGGESTED_DRAFT_TOKENS,
    rounds: int = 3,
    min_seconds: float = MIN_SECONDS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """``prompts`` in groups of ``replies`` (at most) greedy replies at once (one thread each, as a server's
    callers), without drafts and with every reply drafting in the same steps (the scheduler's
    ``draft_batches``, within the positions a step the loader allows the graph:
    :func:`chatbot.loader.draft_positions`), on the graph the engine serves; tokens/s each way and
    the speed-up. Or why not: a graph exported without ``query_seqlens`` (before ONNX Runtime
    1.32) drafts one reply at a time."""
    variant, session = served_session(folder)
    if not (session.scores_drafts and session.pads_rows):
        return {"missing": f"{variant} was exported before ONNX Runtime 1.32: replies draft one at a time"}
    replies = min(replies, len(prompts))
    if replies < 2:
        return {"missing": "fewer than 2 prompts"}
    groups = [prompts[i : i + replies] for i in range(0, len(prompts) - replies + 1, replies)]
    config = GenerationConfig(max_new_tokens=new_tokens)
    say = progress or (lambda message: None)
    say(f"speculative decoding: {len(groups)} × {replies} replies at once, with and without drafts")

    def generator(drafts: int) -> BatchingGenerator:
        return BatchingGenerator(
            session,
            stop_token_ids=folder.stop_token_ids,
            max_batch=replies,
            draft_tokens=drafts,
            drafts=folder.drafts,
            draft_batches=True,
            draft_positions=draft_positions(variant),
        )

    for warm_up in (generator(0), generator(draft_tokens)):
        _at_once(warm_up, groups[0], config)
    rates: dict[str, list[float]] = {"plain": [], "together": []}
    drafted = accepted = steps = 0
    differ: tuple[int, int] | None = None
    for round_ in _rounds(rounds, min_seconds):
        order = [("plain", generator(0)), ("together", generator(draft_tokens))][:: -1 if round_ % 2 else 1]
        written: dict[str, list[list[int]]] = {}
        for name, running in order:
            written[name], seconds, tokens = [], 0.0, 0
            for group in groups:
                out, took = _at_once(running, group, config)
                written[name] += out
                seconds, tokens = seconds + took, tokens + sum(len(reply) for reply in out)
            rates[name].append(tokens / seconds)
            drafted, accepted = drafted + running.drafted_tokens, accepted + running.accepted_tokens
            steps += running.verify_steps
        differ = differ or _first_difference(written["plain"], written["together"])
    return {
        "variant": variant,
        "replies": replies,
        "groups": len(groups),
        "rounds": round_ + 1,
        "draft_tokens": draft_tokens,
        "draft_positions": draft_positions(variant),
        "acceptance": accepted / max(1, drafted),
        "tokens_per_step": 1 + accepted / max(1, steps),
        "plain_tokens_per_s": statistics.median(rates["plain"]),
        "together_tokens_per_s": statistics.median(rates["together"]),
        "speedup": statistics.median(t / p for p, t in zip(rates["plain"], rates["together"], strict=True)),
        "identical": differ is None,
        "first_difference": differ,
    }


def served_session(folder: ModelFolder) -> tuple[str, FusedSession]:
    """The CPU graph the engine serves for ``folder``, and a session on it."""
    variant = choose_variant(folder, "cpu")
    path, initializers = folder.variant_path(variant), variant_initializers(folder, variant)
    return variant, FusedSession(path, folder.spec, initializers=initializers)


def _rounds(rounds: int, min_seconds: float) -> Iterator[int]:
    """Round numbers: at least ``rounds``, then more (up to :data:`MAX_ROUNDS`) until
    ``min_seconds`` have passed since the first."""
    started = time.perf_counter()
    round_ = 0
    while round_ < rounds or (time.perf_counter() - started < min_seconds and round_ < MAX_ROUNDS):
        yield round_
        round_ += 1


def _at_once(
    generator: BatchingGenerator, prompts: list[list[int]], config: GenerationConfig
) -> tuple[list[list[int]], float]:
    """Every prompt's reply generated at once, one thread each; and the seconds it took."""
    replies: list[list[int]] = [[] for _ in prompts]

    def reply(index: int) -> None:
        replies[index] = [token.id for token in generator.generate(prompts[index], config)]

    threads = [threading.Thread(target=reply, args=(i,)) for i in range(len(prompts))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies, time.perf_counter() - started


def together_section(result: dict[str, Any], source: str) -> str:
    """One markdown line for ``chatbot bench``: replies drafting together."""
    if "missing" in result:
        return f"Speculative decoding, replies together ({source}): not measured ({result['missing']})."
    return (
        f"Speculative decoding, replies together ({source}; {result['groups']} × {result['replies']} "
        f"greedy replies at once, {result['rounds']} rounds, drafts of up to {result['draft_tokens']} "
        f"within {result['draft_positions']} positions a step on `{result['variant']}`): "
        f"{_accepted(result)}; {result['plain_tokens_per_s']:.0f} → {result['together_tokens_per_s']:.0f} "
        f"tokens/s ({result['speedup']:.2f}×), {_same(result)}."
    )


def _first_difference(plain: list[list[int]], drafting: list[list[int]]) -> tuple[int, int] | None:
    """Where drafting first picked another token (reply, token): a near-tie that a step of several
    positions computed differently from a step of one (quantised graphs: other kernels)."""
    for index, (a, b) in enumerate(zip(plain, drafting, strict=True)):
        if a != b:
            return index, next(
                (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
            )
    return None


def _decode(
    generator: BatchingGenerator, prompts: list[list[int]], config: GenerationConfig
) -> tuple[list[list[int]], float, int]:
    """Each prompt's reply, the seconds spent after each first token, and the tokens after it."""
    replies, seconds, tokens = [], 0.0, 0
    for prompt in prompts:
        reply = []
        stream = generator.generate(prompt, config)
        reply.append(next(iter(stream)).id)
        started = time.perf_counter()
        reply.extend(token.id for token in stream)
        seconds += time.perf_counter() - started
        tokens += len(reply) - 1
        replies.append(reply)
    return replies, seconds, tokens


def section(result: dict[str, Any], source: str) -> str:
    """One markdown line for ``chatbot bench``."""
    if "missing" in result:
        return f"Speculative decoding ({source}): not measured ({result['missing']})."
    return (
        f"Speculative decoding ({source}; {result['prompts']} greedy replies at batch 1, "
        f"{result.get('rounds', 'some')} rounds, "
        f"{result['decode_tokens']} tokens after the first, drafts of up to {result['draft_tokens']} "
        f"from {result.get('drafted_from', 'the conversation and recent replies')}): "
        f"{_accepted(result)}; decode {result['plain_ms_per_token']:.2f} → "
        f"{result['drafting_ms_per_token']:.2f} ms/token ({result['speedup']:.2f}×), {_same(result)}."
    )


def _accepted(result: dict[str, Any]) -> str:
    return (
        f"{result['acceptance']:.0%} of drafted tokens accepted, {result['tokens_per_step']:.2f} tokens "
        "per drafting step"
    )


def _same(result: dict[str, Any]) -> str:
    where = result.get("first_difference")
    if result.get("identical", True) or not where:
        return "identical replies"
    return f"**not identical**: reply {where[0] + 1} first differs at token {where[1] + 1} (a near-tie)"
