"""Continuous batching (chatbot.scheduler) on real fused graphs of a tiny model, many threads at once."""

from __future__ import annotations

import shutil
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from together import at_once

from chatbot import GenerationConfig, ModelFolder
from chatbot.drafting import DRAFT_POSITIONS, DraftTable, draft
from chatbot.fused import FusedSession
from chatbot.generation import Token
from chatbot.loader import load_generator
from chatbot.scheduler import BatchingGenerator
from training.export.fused_graph import build_variant

GREEDY = GenerationConfig(max_new_tokens=40)


@pytest.fixture(scope="module")
def folder(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelFolder:
    path = tmp_path_factory.mktemp("batching") / "model"
    shutil.copytree(tiny_model_dir, path)
    build_variant(path, "cpu-fp32")  # exact arithmetic: a batch row computes what it computes alone
    return ModelFolder(path)


def _generator(
    folder: ModelFolder,
    variant: str = "cpu-fp32",
    *,
    fixed: bool = False,
    max_batch: int = 32,
    kept_bytes: int = 0,
    draft_tokens: int = 0,
    drafts: DraftTable | None = None,
    draft_batches: bool = False,
    draft_positions: int = DRAFT_POSITIONS,
) -> BatchingGenerator:
    """The CPU's scheduler (a growing cache), or with ``fixed`` the GPU's (fixed slots, the decode
    step feeding itself) running on the CPU provider."""
    session = FusedSession(folder.variant_path(variant), folder.spec)
    return BatchingGenerator(
        session,
        stop_token_ids=folder.stop_token_ids,
        max_batch=max_batch,
        fixed_slots=fixed,
        kept_bytes=kept_bytes,
        draft_tokens=draft_tokens,
        drafts=drafts,
        draft_batches=draft_batches,
        draft_positions=draft_positions,
    )


# every test with this parameter runs the CPU's way and the GPU's way of keeping rows
ROWS = pytest.mark.parametrize("fixed", [False, True], ids=["growing-rows", "fixed-slots"])


def _prompts(folder: ModelFolder, count: int) -> list[list[int]]:
    """Prompts of different lengths (a few tokens to a few dozen)."""
    texts = [f"customer {i}: where is parcel {i * 37}? " * (1 + i % 4) for i in range(count)]
    return [folder.encode(folder.template.render([{"role": "user", "content": t}])) for t in texts]


def _at_once(
    generator: BatchingGenerator, prompts: list[list[int]], configs: list[GenerationConfig]
) -> list[list[int]]:
    return [[t.id for t in reply] for reply in at_once(generator, prompts, configs)]


@ROWS
def test_many_threads_get_exactly_what_each_would_get_alone(folder: ModelFolder, fixed: bool) -> None:
    prompts = _prompts(folder, 16)
    configs = [GenerationConfig(max_new_tokens=5 + 3 * i) for i in range(16)]  # rows leave at different steps
    alone = [[t.id for t in _generator(folder).generate(p, c)] for p, c in zip(prompts, configs, strict=True)]
    assert _at_once(_generator(folder, fixed=fixed, max_batch=6), prompts, configs) == alone


@ROWS
def test_sampling_settings_and_seeds_stay_with_their_conversation(folder: ModelFolder, fixed: bool) -> None:
    prompts = _prompts(folder, 6)
    configs = [
        GenerationConfig(max_new_tokens=30, temperature=0.9, top_k=20, seed=i)
        if i % 2
        else GenerationConfig(max_new_tokens=10 + i)
        for i in range(6)
    ]
    alone = [[t.id for t in _generator(folder).generate(p, c)] for p, c in zip(prompts, configs, strict=True)]
    assert _at_once(_generator(folder, fixed=fixed), prompts, configs) == alone


@ROWS
def test_a_reader_that_leaves_frees_its_slot_for_the_others(folder: ModelFolder, fixed: bool) -> None:
    generator = _generator(folder, fixed=fixed, max_batch=2)
    prompts = _prompts(folder, 3)
    left = generator.generate(prompts[0], GREEDY)
    next(left)
    left.close()  # e.g. a visitor closed the tab mid-reply
    expected = [[t.id for t in _generator(folder).generate(p, GREEDY)] for p in prompts[1:]]
    assert _at_once(generator, prompts[1:], [GREEDY, GREEDY]) == expected


@ROWS
def test_the_budget_and_the_window_bound_a_reply(folder: ModelFolder, fixed: bool) -> None:
    generator = _generator(folder, fixed=fixed)
    generator.stop_token_ids = ()
    prompt = _prompts(folder, 1)[0]
    assert len(list(generator.generate(prompt, GenerationConfig(max_new_tokens=7)))) == 7
    window = folder.spec.n_positions
    long_prompt = (prompt * window)[: window - 3]
    assert len(list(generator.generate(long_prompt, GenerationConfig(max_new_tokens=50)))) == 3
    with pytest.raises(ValueError, match="leaves no room"):
        generator.generate((prompt * window)[:window], GREEDY)


@ROWS
def test_a_failed_step_fails_its_replies_and_the_scheduler_goes_on(folder: ModelFolder, fixed: bool) -> None:
    generator = _generator(folder, fixed=fixed)
    with pytest.raises(Exception, match=r"(?i)indices|out of|invalid"):  # an id outside the vocabulary
        list(generator.generate([folder.spec.vocab_size + 5], GREEDY))
    assert list(generator.generate(_prompts(folder, 1)[0], GenerationConfig(max_new_tokens=3)))


def test_int8_rows_are_quantised_alone_so_batches_change_nothing(folder: ModelFolder) -> None:
    prompts = _prompts(folder, 12)
    configs = [GenerationConfig(max_new_tokens=8 + 2 * i) for i in range(12)]
    generator = load_generator(folder, variant="cpu-int8")
    assert isinstance(generator, BatchingGenerator)
    alone = [[t.id for t in generator.generate(p, c)] for p, c in zip(prompts, configs, strict=True)]
    assert _at_once(generator, prompts, configs) == alone


def test_the_cache_grows_in_slots_and_length_while_replies_are_in_progress(folder: ModelFolder) -> None:
    short = _prompts(folder, 4)
    long_prompt = (short[3] * 20)[: folder.spec.n_positions - 60]  # needs the whole window
    prompts = [*short, long_prompt]
    configs = [GenerationConfig(max_new_tokens=40)] * len(prompts)
    alone = [[t.id for t in _generator(folder).generate(p, c)] for p, c in zip(prompts, configs, strict=True)]
    generator = _generator(folder)
    assert _at_once(generator, prompts, configs) == alone
    cache = generator._rows.cache  # white-box: the cache grew to fit the long prompt's slot
    assert cache.length == folder.spec.n_positions and cache.capacity >= len(prompts)


def test_a_growing_cache_keeps_what_its_slots_hold(folder: ModelFolder) -> None:
    cache = FusedSession(folder.variant_path("cpu-fp32"), folder.spec).new_cache(1, 10)
    assert cache.length == 128 and cache.capacity == 1  # lengths grow in steps of 128
    cache.buffers[0][0, :, :10] = 7.0
    cache.reserve(3, 200)
    assert (cache.capacity, cache.length) == (3, min(256, folder.spec.n_positions))
    assert (cache.buffers[0][0, :, :10] == 7.0).all() and (cache.buffers[0][1:] == 0).all()
    with pytest.raises(ValueError, match="do not fit"):
        cache.reserve(1, folder.spec.n_positions + 1)


def test_steps_over_the_same_rows_keep_their_binding_until_the_buffers_grow(folder: ModelFolder) -> None:
    session = FusedSession(folder.variant_path("cpu-fp32"), folder.spec)
    prompt = _prompts(folder, 1)[0]
    cache = session.new_cache(1, len(prompt) + 2)
    first = int(session.step(cache, 0, [prompt], [0]).next_token[0])
    kept = cache.binding
    second = int(session.step(cache, 0, [[first]], [len(prompt)]).next_token[0])
    assert cache.binding is kept  # the same rows: only the small inputs were bound again
    cache.reserve(2, folder.spec.n_positions)  # new buffers: the kept binding points at the old ones
    assert cache.binding is None
    third = session.step(cache, 0, [[second]], [len(prompt) + 1])
    whole = session.step(session.new_cache(), 0, [[*prompt, first, second]], [0])
    np.testing.assert_allclose(third.logits[0], whole.logits[0], rtol=1e-4, atol=1e-4)


@ROWS
def test_greedy_replies_take_the_graphs_pick_and_log_probability(folder: ModelFolder, fixed: bool) -> None:
    prompt = _prompts(folder, 1)[0]
    generator = _generator(folder, fixed=fixed)
    in_graph = list(generator.generate(prompt, GREEDY))  # argmax and log-probability from the graph
    # a penalty of 1 + 1e-9 changes no pick but sends the reply through the host's sampler
    penalised = GenerationConfig(max_new_tokens=40, repetition_penalty=1 + 1e-9)
    on_host = list(generator.generate(prompt, penalised))
    assert [t.id for t in in_graph] == [t.id for t in on_host]
    assert [t.logprob for t in in_graph] == pytest.approx([t.logprob for t in on_host], abs=1e-5)


def test_fixed_slots_fill_holes_and_run_in_batch_buckets(folder: ModelFolder) -> None:
    generator = _generator(folder, fixed=True, max_batch=5)
    slots = generator._rows.slots  # white-box: what FixedSlots ran
    assert slots.buckets == (1, 2, 4, 5)
    prompts = _prompts(folder, 9)
    configs = [GenerationConfig(max_new_tokens=3 + 5 * (i % 3)) for i in range(9)]  # leave out of order
    alone = [[t.id for t in _generator(folder).generate(p, c)] for p, c in zip(prompts, configs, strict=True)]
    assert _at_once(generator, prompts, configs) == alone
    assert len(slots._bindings) >= 2  # more than one bucket size ran (which ones depends on thread timing)
    spec = folder.spec
    assert slots.nbytes == 5 * 2 * spec.n_layer * spec.n_positions * spec.n_head * spec.head_dim * 4


# -- keys and values kept between a conversation's turns ------------------------------------


def _turn(generator: BatchingGenerator, prompt: list[int], key: str | None) -> list[int]:
    return [t.id for t in generator.generate(prompt, GREEDY, key=key)]


def _next_prompt(folder: ModelFolder, before: list[int], reply: list[int], text: str) -> list[int]:
    """The next turn's prompt as the engine writes it: the conversation so far, then the message."""
    return before + reply + folder.encode(folder.template.render([{"role": "user", "content": text}]))


def test_a_conversations_next_turn_prefills_only_what_is_new(folder: ModelFolder) -> None:
    kept = _generator(folder, kept_bytes=64 << 20)
    first = _prompts(folder, 3)[2]
    reply = _turn(kept, first, "c1")
    assert kept.reused_tokens == 0  # nothing kept yet
    second = _next_prompt(folder, first, reply, "and when will it arrive?")
    again = _turn(kept, second, "c1")
    # the earlier turns came from the cache: the prompt, and the reply up to its last token
    # (whose keys and values a step would have written next)
    assert kept.reused_tokens >= len(first) + len(reply) - 1
    # fp32: what it computed from the kept positions is what a fresh prefill computes
    assert again == _turn(_generator(folder), second, None)


def test_kept_positions_end_where_the_prompt_parts_from_them(folder: ModelFolder) -> None:
    kept = _generator(folder, kept_bytes=64 << 20)
    first = _prompts(folder, 4)[3]
    _turn(kept, first, "c1")
    rewritten = [*first[:20], (first[20] + 1) % folder.spec.vocab_size, *first[21:]]
    assert _turn(kept, rewritten, "c1") == _turn(_generator(folder), rewritten, None)
    assert kept.reused_tokens == 20  # up to the first token that differs
    _turn(kept, first[:10], "c1")  # shorter than MIN_KEPT in common: prefilled whole
    assert kept.reused_tokens == 20
    _turn(kept, first, "other")  # another conversation's key: nothing of c1's is used
    assert kept.reused_tokens == 20


def test_the_memory_for_kept_turns_is_bounded_and_the_oldest_goes_first(folder: ModelFolder) -> None:
    prompts = _prompts(folder, 8)[4:]
    none = _generator(folder, kept_bytes=0)
    for i, prompt in enumerate(prompts):
        _turn(none, prompt, f"c{i}")
        _turn(none, prompt, f"c{i}")
    assert none.reused_tokens == 0
    rows = _generator(folder, kept_bytes=1 << 30)._rows
    per_position = sum(buffer[0, :, :1].nbytes for buffer in rows.cache.buffers)  # type: ignore[union-attr]
    budget = per_position * (2 * max(len(p) for p in prompts) + 2 * GREEDY.max_new_tokens)
    bounded = _generator(folder, kept_bytes=budget)
    for i, prompt in enumerate(prompts):
        _turn(bounded, prompt, f"c{i}")
    kept = bounded._rows.kept  # type: ignore[union-attr]
    assert kept.nbytes <= budget and list(kept.entries) == ["c2", "c3"]  # c0 and c1 made room
    _turn(bounded, prompts[0], "c0")  # dropped: prefilled whole
    assert bounded.reused_tokens == 0
    _turn(bounded, prompts[3], "c3")
    assert bounded.reused_tokens == len(prompts[3]) - 1


def test_conversations_in_many_threads_each_reuse_only_their_own_turns(folder: ModelFolder) -> None:
    kept = _generator(folder, kept_bytes=64 << 20)
    firsts = _prompts(folder, 6)
    keys = [f"c{i}" for i in range(6)]
    replies = [[t.id for t in r] for r in at_once(kept, firsts, [GREEDY] * 6, keys=keys)]
    pairs = list(zip(firsts, replies, strict=True))
    seconds = [_next_prompt(folder, p, r, f"thanks, order {i}") for i, (p, r) in enumerate(pairs)]
    answers = [[t.id for t in r] for r in at_once(kept, seconds, [GREEDY] * 6, keys=keys)]
    fresh = _generator(folder)
    assert answers == [_turn(fresh, prompt, None) for prompt in seconds]
    assert kept.reused_tokens >= sum(len(p) + len(r) - 1 for p, r in pairs)


def _with_system(folder: ModelFolder, system: str, text: str) -> tuple[list[int], int]:
    """A first turn's prompt with a system prompt, and how many of its tokens are the system's."""
    head = folder.encode(
        folder.template.render([{"role": "system", "content": system}], add_generation_prompt=False)
    )
    turn = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    prompt = folder.encode(folder.template.render(turn))
    assert prompt[: len(head)] == head
    return prompt, len(head)


SYSTEM = "You are the support agent of a parcel shop. Answer politely, in one or two sentences."


def test_conversations_with_the_same_system_prompt_compute_it_once(folder: ModelFolder) -> None:
    kept = _generator(folder, kept_bytes=64 << 20)
    fresh = _generator(folder)
    first, shared = _with_system(folder, SYSTEM, "where is parcel 12?")
    assert shared >= 16  # MIN_KEPT: shorter system prompts are prefilled with the rest
    assert _turn_shared(kept, first, "c1", shared) == _turn(fresh, first, None)
    assert kept.reused_tokens == 0  # the first prompt with it computed it
    other, _ = _with_system(folder, SYSTEM, "can I return a broken kettle?")
    # another conversation: the system prompt's turn came from the first, the rest was prefilled
    assert _turn_shared(kept, other, "c2", shared) == _turn(fresh, other, None)
    assert kept.reused_tokens == shared
    # a conversation's own earlier turns, longer than the system prompt, still win
    reply = _turn(fresh, first, None)
    second = _next_prompt(folder, first, reply, "it is order 4242")
    before = kept.reused_tokens
    assert _turn_shared(kept, second, "c1", shared) == _turn(fresh, second, None)
    assert kept.reused_tokens - before >= len(first) + len(reply) - 1
    # another system prompt shares nothing; without ``shared`` nothing crosses conversations
    changed, changed_shared = _with_system(folder, SYSTEM.replace("parcel", "flower"), "where is parcel 12?")
    before = kept.reused_tokens
    _turn_shared(kept, changed, "c3", changed_shared)
    _turn(kept, other, "c4")
    assert kept.reused_tokens == before


def test_many_conversations_starting_at_once_with_one_system_prompt_match_their_replies_alone(
    folder: ModelFolder,
) -> None:
    kept = _generator(folder, kept_bytes=64 << 20)
    prompts, shared = zip(
        *(_with_system(folder, SYSTEM, f"where is parcel {i * 37}?") for i in range(6)), strict=True
    )
    streams = at_once(
        kept, list(prompts), [GREEDY] * 6, keys=[f"c{i}" for i in range(6)], shared=list(shared)
    )
    fresh = _generator(folder)
    assert [[t.id for t in r] for r in streams] == [_turn(fresh, p, None) for p in prompts]
    assert kept.reused_tokens >= shared[0]  # at least the later ones took it from the first


def test_a_system_prompt_is_held_once_and_conversations_keep_only_what_follows_it(
    folder: ModelFolder,
) -> None:
    generator = _generator(folder, kept_bytes=64 << 20)
    fresh = _generator(folder)
    kept = generator._rows.kept  # type: ignore[union-attr]
    per_position = sum(buffer[0, :, :1].nbytes for buffer in generator._rows.cache.buffers)  # type: ignore[union-attr]
    prompts, shared = zip(
        *(_with_system(folder, SYSTEM, f"where is parcel {i}?") for i in range(3)), strict=True
    )
    replies = [_turn_shared(generator, prompt, f"c{i}", shared[0]) for i, prompt in enumerate(prompts)]
    entries = [kept.entries[f"c{i}"] for i in range(3)]
    assert all(entry.start == shared[0] for entry in entries)  # the system turn is not copied again
    positions = shared[0] + sum(len(entry.tokens) - shared[0] for entry in entries)
    assert kept.nbytes == positions * per_position
    # the next turn puts the system turn and the conversation's own positions back together
    second = _next_prompt(folder, prompts[0], replies[0], "it is order 4242")
    before = generator.reused_tokens
    assert _turn_shared(generator, second, "c0", shared[0]) == _turn(fresh, second, None)
    assert generator.reused_tokens - before >= len(prompts[0]) + len(replies[0]) - 1
    # without the system turn's entry, what follows it is no use: prefilled whole, still right
    kept._drop(np.array(prompts[1][: shared[1]], dtype=np.int64).tobytes())
    second = _next_prompt(folder, prompts[1], replies[1], "it is order 4243")
    before = generator.reused_tokens
    assert _turn_shared(generator, second, "c1", shared[1]) == _turn(fresh, second, None)
    assert generator.reused_tokens == before


def test_the_system_prompts_turn_is_kept_within_the_same_memory_bound(folder: ModelFolder) -> None:
    prompt, shared = _with_system(folder, SYSTEM, "where is parcel 12?")
    none = _generator(folder, kept_bytes=0)
    _turn_shared(none, prompt, "c1", shared)
    _turn_shared(none, prompt, "c2", shared)
    assert none.reused_tokens == 0 and none.kept_bytes() == 0


def _turn_shared(generator: BatchingGenerator, prompt: list[int], key: str | None, shared: int) -> list[int]:
    return [t.id for t in generator.generate(prompt, GREEDY, key=key, shared=shared)]


# -- speculative decoding: drafts from the conversation, verified in one step -----------------


def _echo_prompts(folder: ModelFolder, count: int) -> list[list[int]]:
    """Prompts that repeat themselves (an order number, a product): drafts find something."""
    texts = [
        f"order A-{4711 + i} for the merino sweater, order A-{4711 + i} please " * 3 for i in range(count)
    ]
    return [folder.encode(folder.template.render([{"role": "user", "content": t}])) for t in texts]


def _alone(
    folder: ModelFolder, prompts: list[list[int]], configs: list[GenerationConfig]
) -> list[list[Token]]:
    plain = _generator(folder)
    return [list(plain.generate(p, c)) for p, c in zip(prompts, configs, strict=True)]


def _alone_without_stop(
    folder: ModelFolder, prompts: list[list[int]], configs: list[GenerationConfig]
) -> list[list[Token]]:
    plain = _generator(folder)
    plain.stop_token_ids = ()
    return [list(plain.generate(p, c)) for p, c in zip(prompts, configs, strict=True)]


def test_speculative_greedy_replies_are_token_for_token_the_plain_ones(folder: ModelFolder) -> None:
    prompts = [*_echo_prompts(folder, 3), *_prompts(folder, 3)]
    configs = [GenerationConfig(max_new_tokens=60)] * len(prompts)
    expected = _alone(folder, prompts, configs)
    generator = _generator(folder, draft_tokens=4)
    for prompt, config, plain in zip(prompts, configs, expected, strict=True):
        drafted = list(generator.generate(prompt, config))
        assert [t.id for t in drafted] == [t.id for t in plain]
        assert [t.logprob for t in drafted] == pytest.approx([t.logprob for t in plain], abs=1e-4)
    assert generator.accepted_tokens > 0  # drafts were right, and steps were saved
    assert generator.drafted_tokens > generator.accepted_tokens  # and wrong ones were thrown away


def test_speculative_rows_batched_with_plain_greedy_and_sampling_rows(folder: ModelFolder) -> None:
    prompts = [*_echo_prompts(folder, 3), *_prompts(folder, 3)]
    configs = [
        GenerationConfig(max_new_tokens=25, temperature=0.9, top_k=20, seed=i)
        if i % 2
        else GenerationConfig(max_new_tokens=10 + 5 * i)  # rows leave at different steps
        for i in range(len(prompts))
    ]
    configs[0] = GenerationConfig(max_new_tokens=120)  # outlasts the others, then drafts alone
    generator = _generator(folder, draft_tokens=5, max_batch=3)
    generator.stop_token_ids = ()
    expected = [[t.id for t in reply] for reply in _alone_without_stop(folder, prompts, configs)]
    # a greedy reply alone in the batch drafts; the others join and leave around it
    assert _at_once(generator, prompts, configs) == expected
    assert generator.accepted_tokens > 0


@pytest.mark.parametrize("positions", [DRAFT_POSITIONS, 12])
def test_greedy_replies_in_progress_together_draft_in_one_step_and_keep_their_replies(
    folder: ModelFolder, positions: int
) -> None:
    """Rows of different draft lengths (none, for some) in one right-padded step (query_seqlens):
    every reply is token for token what it is alone (the fp32 graph), stop tokens included; a
    step feeds at most ``draft_positions`` positions, the drafts cut to fit."""
    prompts = [*_echo_prompts(folder, 4), *_prompts(folder, 2)]
    configs = [GenerationConfig(max_new_tokens=30 + 7 * i) for i in range(len(prompts))]  # leave apart
    expected = [[t.id for t in reply] for reply in _alone(folder, prompts, configs)]
    generator = _generator(folder, draft_tokens=5, max_batch=6, draft_batches=True, draft_positions=positions)
    assert generator.draft_batches  # the graph pads rows: built on ONNX Runtime 1.32+
    steps: list[tuple[int, int]] = []
    step = generator._rows.verify  # white-box: how many rows and positions each verifying step fed

    def counted(batch: list[Any], drafts: list[list[int]]) -> Any:
        steps.append((len(batch), 1 + max(len(drafted) for drafted in drafts)))
        return step(batch, drafts)

    generator._rows.verify = counted  # type: ignore[method-assign]
    assert _at_once(generator, prompts, configs) == expected
    assert max(rows for rows, _ in steps) > 1 and generator.accepted_tokens > 0  # several at once
    assert all(rows * width <= positions for rows, width in steps if rows > 1)
    if positions < DRAFT_POSITIONS:  # 6 rows within 12 positions: one drafted token each
        assert {width for rows, width in steps if rows == 6} <= {2}
    # without it, replies draft only when alone in the batch
    alone_only = _generator(folder, draft_tokens=5, max_batch=6)
    assert not alone_only.draft_batches and _at_once(alone_only, prompts, configs) == expected


def test_a_draft_stops_at_the_stop_token_and_the_budget(folder: ModelFolder) -> None:
    prompt = _echo_prompts(folder, 1)[0]
    plain = [t.id for t in _generator(folder).generate(prompt, GenerationConfig(max_new_tokens=80))]
    generator = _generator(folder, draft_tokens=6)
    # the plain reply's own tokens as stop tokens: a draft that holds one stops there
    for stop in sorted(set(plain[2:]))[:6]:
        generator.stop_token_ids = (stop,)
        expected = plain[: plain.index(stop) + 1]
        assert [t.id for t in generator.generate(prompt, GenerationConfig(max_new_tokens=80))] == expected
    generator.stop_token_ids = ()
    for budget in (1, 2, 3, 5, 8, 13):
        reply = [t.id for t in generator.generate(prompt, GenerationConfig(max_new_tokens=budget))]
        assert reply == plain[:budget]


def test_drafts_from_the_models_training_replies_keep_the_plain_reply(folder: ModelFolder) -> None:
    prompts = _prompts(folder, 4)
    configs = [GenerationConfig(max_new_tokens=40)] * len(prompts)
    plain = [[t.id for t in reply] for reply in _alone(folder, prompts, configs)]
    # a table of "training replies": two of the four replies, each after the prompt's last tokens
    table = DraftTable.build(
        np.concatenate([[*p[-3:], *r] for p, r in zip(prompts[:2], plain[:2], strict=True)])
    )
    generator = _generator(folder, draft_tokens=6, drafts=table)
    assert [[t.id for t in generator.generate(p, c)] for p, c in zip(prompts, configs, strict=True)] == plain
    # the replies it was built from came mostly from drafts: far fewer steps than tokens
    assert generator.accepted_tokens >= 0.5 * sum(len(r) - 1 for r in plain[:2])
    assert generator.verify_steps < sum(len(r) for r in plain)


def test_a_reply_whose_drafts_keep_missing_backs_off_to_plain_steps(folder: ModelFolder) -> None:
    prompt = _prompts(folder, 1)[0]
    config = GenerationConfig(max_new_tokens=60)
    plain = [t.id for t in _alone(folder, [prompt], [config])[0]]
    # a table whose every context is the reply's token and whose next token is always wrong
    wrong = [[token, (after + 1) % folder.spec.vocab_size] for token, after in pairwise(plain)]
    generator = _generator(folder, draft_tokens=4, drafts=DraftTable.build(np.concatenate(wrong)))
    generator.stop_token_ids = ()
    assert [t.id for t in generator.generate(prompt, config)] == plain
    assert generator.accepted_tokens == 0
    # drafts after 0, 1, 3, 7 and 15 plain steps: 5 or so wider steps, not 60
    assert 1 <= generator.verify_steps <= 6


def test_drafts_come_from_the_latest_earlier_occurrence() -> None:
    assert draft([5, 6, 7, 8, 9, 5, 6], tokens=3) == [7, 8, 9]
    assert draft([1, 2, 3, 1, 2, 4, 1, 2], tokens=2) == [4, 1]  # the latest occurrence wins
    assert draft([9, 2, 3, 8, 2, 3, 7, 1, 2, 3], tokens=2) == [7, 1]  # the longest match wins
    assert draft([3, 2, 4, 2, 3, 5, 7, 2, 3], tokens=9) == [5, 7, 2, 3]
    assert draft([1, 2, 3], tokens=4) == [] and draft([4], tokens=2) == [] and draft([4, 4], tokens=0) == []
    assert draft([7, 1, 2, 3, 4, 5, 6, 7], tokens=6) == [1, 2]  # a one-token match drafts two


def test_drafts_also_come_from_the_bots_recent_replies(folder: ModelFolder) -> None:
    prompt = _prompts(folder, 1)[0]
    generator = _generator(folder, draft_tokens=4)
    generator.stop_token_ids = ()
    first = [t.id for t in generator.generate(prompt, GenerationConfig(max_new_tokens=30))]
    before = generator.accepted_tokens
    assert (
        generator._recent.tokens.tolist() == first
    )  # white-box: what drafts come from after the conversation
    again = [t.id for t in generator.generate(prompt, GenerationConfig(max_new_tokens=30))]
    assert again == first  # another conversation asking the same: its reply was written before
    assert generator.accepted_tokens - before > before  # more of it came from drafts than the first time
