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

from chatbot.drafting import DraftTable, RecentReplies, back_off, propose
from chatbot.folder import ModelFolder
from chatbot.fused import FusedSession
from chatbot.loader import choose_variant, variant_initializers
from chatbot.scheduler import BatchingGenerator
from chatbot.types import GenerationConfig
from chatbot.versions import model_folder
from training.evaluation.speculative import held_out_prompts
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


def step_times(session: FusedSession, context: int, widths: int, rounds: int = 15) -> list[float]:
    """The median seconds of a step feeding 1 .. ``widths`` positions after ``context`` of them."""
    rng = np.random.default_rng(0)
    cache = session.new_cache(1, context + widths + 1)
    session.step(cache, 0, [rng.integers(0, session.spec.vocab_size, context).tolist()], [0])
    found: list[list[float]] = [[] for _ in range(widths)]
    for _ in range(rounds):
        for width in range(1, widths + 1):
            ids = [rng.integers(0, session.spec.vocab_size, width).tolist()]
            started = time.perf_counter()
            session.step(cache, 0, ids, [context], scored=width if session.scores_drafts else 1)
            found[width - 1].append(time.perf_counter() - started)
    return [statistics.median(times) for times in found]


def compare(
    folder: ModelFolder,
    held_out: Sequence[str],
    policies: Sequence[Policy],
    *,
    train_data: Sequence[str] = (),
    new_tokens: int = 64,
) -> list[dict[str, Any]]:
    """Each policy's steps and estimated speed-up over plain decoding on ``held_out``."""
    variant = choose_variant(folder, "cpu")
    session = FusedSession(
        folder.variant_path(variant), folder.spec, initializers=variant_initializers(folder, variant)
    )
    prompts = held_out_prompts(folder, held_out)
    plain = BatchingGenerator(session, stop_token_ids=folder.stop_token_ids, max_batch=1)
    config = GenerationConfig(max_new_tokens=new_tokens)
    replies = [[token.id for token in plain.generate(prompt, config)] for prompt in prompts]
    tokens = sum(len(reply) - 1 for reply in replies)
    split = training_split(folder.path, train_data, progress=lambda line: None)
    tables = {order: draft_table(split.encoded, order)[0] for order in {policy.order for policy in policies}}
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
    parser.add_argument("--orders", default="2,3,4,5")
    parser.add_argument("--tokens", default="6,8")
    parser.add_argument("--shares", default="0.3,0.5,0.7")
    args = parser.parse_args(argv)
    policies = [
        Policy(int(order), int(tokens), float(share))
        for order in args.orders.split(",")
        for tokens in args.tokens.split(",")
        for share in args.shares.split(",")
    ]
    folder = model_folder(args.model_dir)
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


if __name__ == "__main__":
    main()
