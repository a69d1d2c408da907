"""Choosing how speculative decoding drafts, by replaying it: ``python -m training.evaluation.draft_policy``.

    python -m training.evaluation.draft_policy MODEL_DIR HELD_OUT... [--train-data PATH...]

The greedy replies of the served CPU graph to every agent turn of the held-out conversations are
computed once, plainly. Then the scheduler's way of drafting (a :class:`~chatbot.drafting.DraftTable`
of the training split's agent turns, then the conversation and the bot's recent replies, the
back-off after misses) is replayed over them for each policy: the table's longest context
(``--orders``), the most tokens a draft (``--tokens``) and the share a next token must have had
(``--shares``). A replay counts steps exactly: a step verifies a draft and keeps the greedy
picks up to the first that differs, and that one. What a step costs depends on how many
positions it feeds, so the same graph's step is timed for each width (1 to the longest draft +
1) at the held-out prompts' mean length, and each policy's speed-up is estimated as the plain
steps' time over its steps' time. The estimate leaves out the scheduler's own costs; measure the
policy chosen with ``chatbot bench MODEL_DIR --data HELD_OUT`` (README, "Speculative decoding").

    python -m training.evaluation.draft_policy MODEL_DIR HELD_OUT... --rows 8,16,32 --positions 48,64,96 \
        [--costs-from FOLDER]

replays the engine's policy with that many replies in progress together instead, each draft cut
to the positions a step may feed (:func:`chatbot.drafting.batch_draft_tokens`), pricing each
step by its rows and positions on the served graph of ``--costs-from`` (e.g. the ``chatbot bench
--config gpt2`` folder: a small trained model's drafts at GPT-2 124M's step costs).
Speed is measured here, never in a test.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chatbot.drafting import (
    DRAFT_POSITIONS,
    MIN_SHARE,
    TABLE_ORDER,
    DraftTable,
    RecentReplies,
    back_off,
    batch_draft_tokens,
    propose,
)
from chatbot.folder import ModelFolder
from chatbot.fused import FusedSession
from chatbot.scheduler import BatchingGenerator
from chatbot.settings import SUGGESTED_DRAFT_TOKENS
from chatbot.types import GenerationConfig
from chatbot.versions import model_folder
from training.evaluation.speculative import held_out_prompts, served_session
from training.fitting.train import draft_table, training_split


@dataclass(frozen=True)
class Policy:
    order: int  # the longest context the table keys on
    tokens: int  # the most tokens a draft
    share: float  # a draft goes on while its next token followed its context at least this often


def replay(
    policy: Policy, table: DraftTable, prompts: list[list[int]], replies: list[list[int]]
) -> np.ndarray:
    """How many steps fed each number of drafted tokens (index 0: plain steps) to write ``replies``."""
    steps = np.zeros(policy.tokens + 1, dtype=np.int64)
    recent = RecentReplies()
    for prompt, reply in zip(prompts, replies, strict=True):
        position, misses, plain = 1, 0, 0  # the first token comes from the prefill
        while position < len(reply):
            history = np.asarray(prompt + reply[:position], dtype=np.int64)
            most = min(policy.tokens, len(reply) - position - 1)
            drafted: list[int] = []
            if plain:
                plain -= 1
            elif most >= 1:
                drafted = propose(history, tokens=most, table=table, recent=recent, min_share=policy.share)
            agreed = 0
            while agreed < len(drafted) and drafted[agreed] == reply[position + agreed]:
                agreed += 1
            if drafted:
                misses = 0 if agreed else misses + 1
                plain = back_off(misses)
            steps[len(drafted)] += 1
            position += agreed + 1
        recent.add(reply)
    return steps


def replay_batch(
    policy: Policy,
    table: DraftTable,
    prompts: list[list[int]],
    replies: list[list[int]],
    rows: int,
    positions: int = DRAFT_POSITIONS,
) -> list[tuple[int, int]]:
    """Drafting replayed with ``rows`` replies in progress together, as the scheduler drafts for
    a batch (each draft cut by :func:`~chatbot.drafting.batch_draft_tokens` to ``positions``
    positions a step; ``policy.tokens`` 0: plain decoding): a slot whose reply ends takes the next
    one, each reply once. The steps, as (rows, positions a row): what each cost depends on."""
    steps: list[tuple[int, int]] = []
    recent = RecentReplies()
    waiting = list(range(len(replies)))[::-1]
    slots: list[list[int]] = []  # [reply, position, misses, plain steps]
    while waiting or slots:
        while waiting and len(slots) < rows:
            slots.append([waiting.pop(), 1, 0, 0])  # the first token comes from the prefill
        most = batch_draft_tokens(len(slots), policy.tokens, positions)
        drafts: list[list[int]] = []
        for slot in slots:
            index, position, _, plain = slot
            reply = replies[index]
            tokens = min(most, len(reply) - position - 1)
            if plain:
                slot[3] -= 1
            history = np.asarray(prompts[index] + reply[:position], dtype=np.int64)
            found = (
                propose(history, tokens=tokens, table=table, recent=recent, min_share=policy.share)
                if tokens >= 1 and not plain
                else []
            )
            drafts.append(found)
        steps.append((len(slots), 1 + max(len(found) for found in drafts)))
        for slot, found in zip(list(slots), drafts, strict=True):
            reply = replies[slot[0]]
            agreed = 0
            while agreed < len(found) and found[agreed] == reply[slot[1] + agreed]:
                agreed += 1
            if found:
                slot[2] = 0 if agreed else slot[2] + 1
                slot[3] = back_off(slot[2])
            slot[1] += agreed + 1
            if slot[1] >= len(reply):
                slots.remove(slot)
                recent.add(reply)
    return steps


def step_times(
    session: FusedSession, context: int, widths: int, rounds: int = 15, rows: int = 1
) -> list[float]:
    """The median seconds of a step of ``rows`` rows feeding 1 .. ``widths`` positions each after
    ``context`` of them (several rows and positions need a graph that pads rows)."""
    rng = np.random.default_rng(0)
    cache = session.new_cache(rows, context + widths + 1)
    session.step(cache, 0, [rng.integers(0, session.spec.vocab_size, context).tolist()], [0])
    for row in range(1, rows):
        cache.move(0, row, context)
    found: list[list[float]] = [[] for _ in range(widths)]
    starts = [context] * rows
    for _ in range(rounds):
        for width in range(1, widths + 1):
            ids = rng.integers(0, session.spec.vocab_size, (rows, width))
            padded = {"lengths": [width] * rows} if rows > 1 and width > 1 else {}
            started = time.perf_counter()
            session.step(cache, 0, ids, starts, scored=width if session.scores_drafts else 1, **padded)
            found[width - 1].append(time.perf_counter() - started)
    return [statistics.median(times) for times in found]


def batch_speedups(
    folder: ModelFolder,
    held_out: Sequence[str],
    policy: Policy,
    rows: Sequence[int],
    positions: Sequence[int],
    *,
    train_data: Sequence[str] = (),
    costs_from: ModelFolder | None = None,
    new_tokens: int = 64,
) -> list[dict[str, Any]]:
    """For each number of replies in progress together and each positions limit: ``policy``'s
    estimated speed-up over plain decoding, its steps replayed over ``folder``'s greedy replies
    to ``held_out`` and priced at the step times of ``costs_from``'s served CPU graph (default:
    ``folder``'s; e.g. a ``chatbot bench --config gpt2`` folder, to price a trained small
    model's drafts at GPT-2 124M's step costs), by rows and positions."""
    prompts, replies = _greedy_replies(folder, served_session(folder)[1], held_out, new_tokens)
    table = _tables(folder, train_data, {policy.order})[policy.order]
    timed = costs_from or folder
    _, session = served_session(timed)
    context = min(round(statistics.mean(len(prompt) for prompt in prompts)), timed.spec.n_positions // 2)
    widths = 1 + policy.tokens
    # rows in between are priced between the nearest timed ones (a batch shrinks as replies end)
    timed_rows = sorted({1 << i for i in range(max(rows).bit_length())} | set(rows))
    costs = {n: step_times(session, context, widths, rounds=5, rows=n) for n in timed_rows}

    def seconds(steps: list[tuple[int, int]]) -> float:
        return sum(float(np.interp(k, timed_rows, [costs[n][w - 1] for n in timed_rows])) for k, w in steps)

    plain = Policy(policy.order, 0, policy.share)
    results = []
    for n in rows:
        base = seconds(replay_batch(plain, table, prompts, replies, n))
        for limit in positions:
            steps = replay_batch(policy, table, prompts, replies, n, limit)
            speedup = base / seconds(steps)
            results.append({"rows": n, "positions": limit, "steps": len(steps), "estimated_speedup": speedup})
    return results


def _greedy_replies(
    folder: ModelFolder, session: FusedSession, held_out: Sequence[str], new_tokens: int
) -> tuple[list[list[int]], list[list[int]]]:
    """The held-out prompts and ``session``'s plain greedy replies to them."""
    prompts = held_out_prompts(folder, held_out)
    plain = BatchingGenerator(session, stop_token_ids=folder.stop_token_ids, max_batch=1)
    config = GenerationConfig(max_new_tokens=new_tokens)
    return prompts, [[token.id for token in plain.generate(prompt, config)] for prompt in prompts]


def _tables(folder: ModelFolder, train_data: Sequence[str], orders: set[int]) -> dict[int, DraftTable]:
    """Draft tables of the training split (the card's files, or ``train_data``), by longest context."""
    split = training_split(folder.path, train_data, progress=lambda line: None)
    return {order: draft_table(split.encoded, order)[0] for order in orders}


def compare(
    folder: ModelFolder,
    held_out: Sequence[str],
    policies: Sequence[Policy],
    *,
    train_data: Sequence[str] = (),
    new_tokens: int = 64,
) -> list[dict[str, Any]]:
    """Each policy's steps and estimated speed-up over plain decoding on ``held_out``."""
    variant, session = served_session(folder)
    prompts, replies = _greedy_replies(folder, session, held_out, new_tokens)
    tokens = sum(len(reply) - 1 for reply in replies)
    tables = _tables(folder, train_data, {policy.order for policy in policies})
    context = round(statistics.mean(len(prompt) for prompt in prompts))
    costs = step_times(session, context, 1 + max(policy.tokens for policy in policies))
    results = []
    for policy in policies:
        steps = replay(policy, tables[policy.order], prompts, replies)
        spent = sum(count * costs[width] for width, count in enumerate(steps))
        results.append(
            {
                "policy": policy,
                "variant": variant,
                "tokens": tokens,
                "steps": int(steps.sum()),
                "tokens_per_step": tokens / steps.sum(),
                "estimated_speedup": tokens * costs[0] / spent,
            }
        )
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.draft_policy", description=__doc__)
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument("held_out", metavar="HELD_OUT", nargs="+")
    parser.add_argument("--train-data", nargs="+", default=(), help="default: the files the card records")
    parser.add_argument("--orders", help="default 2,3,4,5 (with --rows: the engine's, 4)")
    parser.add_argument("--tokens", help="default 6,8 (with --rows: the engine's, 8)")
    parser.add_argument("--shares", help="default 0.3,0.5,0.7 (with --rows: the engine's, 0.5)")
    parser.add_argument(
        "--rows",
        help="replies in progress together, e.g. 1,8,32: replay the default policy (or the first "
        "of --orders, --tokens, --shares) in batches instead, for each --positions limit",
    )
    parser.add_argument("--positions", default=str(DRAFT_POSITIONS), help="with --rows: e.g. 48,96,1000")
    parser.add_argument("--costs-from", metavar="FOLDER", help="with --rows: price the steps on its graph")
    args = parser.parse_args(argv)
    folder = model_folder(args.model_dir)
    engine = args.rows is not None  # batches replay the engine's policy unless told otherwise
    policies = [
        Policy(int(order), int(tokens), float(share))
        for order in (args.orders or (str(TABLE_ORDER) if engine else "2,3,4,5")).split(",")
        for tokens in (args.tokens or (str(SUGGESTED_DRAFT_TOKENS) if engine else "6,8")).split(",")
        for share in (args.shares or (str(MIN_SHARE) if engine else "0.3,0.5,0.7")).split(",")
    ]
    if engine:
        _print_batches(folder, args, policies[0])
        return
    results = compare(folder, args.held_out, policies, train_data=args.train_data)
    first = results[0]
    print(f"{folder.path} ({first['variant']}): {first['tokens']} greedy tokens after the first")
    print("| longest context | tokens a draft | share | steps | tokens a step | estimated speed-up |")
    print("|---:|---:|---:|---:|---:|---:|")
    for found in sorted(results, key=lambda r: -r["estimated_speedup"]):
        policy = found["policy"]
        print(
            f"| {policy.order} | {policy.tokens} | {policy.share:g} | {found['steps']} | "
            f"{found['tokens_per_step']:.2f} | {found['estimated_speedup']:.2f}× |"
        )


def _print_batches(folder: ModelFolder, args: argparse.Namespace, policy: Policy) -> None:
    rows = [int(n) for n in args.rows.split(",")]
    limits = [int(n) for n in args.positions.split(",")]
    costs_from = model_folder(args.costs_from) if args.costs_from else None
    results = batch_speedups(
        folder, args.held_out, policy, rows, limits, train_data=args.train_data, costs_from=costs_from
    )
    priced = (costs_from or folder).path
    print(f"{folder.path}: {policy}, drafts replayed in batches, steps priced on {priced}")
    print("| replies together | positions a step, at most | steps | estimated speed-up |")
    print("|---:|---:|---:|---:|")
    for found in results:
        speedup = found["estimated_speedup"]
        print(f"| {found['rows']} | {found['positions']} | {found['steps']} | {speedup:.2f}× |")


if __name__ == "__main__":
    main()
