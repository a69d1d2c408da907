"""Drafts from the model's own training replies (chatbot.drafting.DraftTable): built by training,
kept in the folder, and drafted from by default."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from chatbot import Engine, EngineConfig, GenerationConfig, ModelFolder
from chatbot.card import read_card
from chatbot.drafting import DRAFTS_FILE, DraftTable
from chatbot.errors import ModelFolderError
from chatbot.settings import SUGGESTED_DRAFT_TOKENS
from training.card import new_card, write_card
from training.dataset.examples import IGNORE
from training.fitting.train import write_drafts


def test_a_draft_walks_what_most_often_followed_the_longest_context() -> None:
    replies = [7, 1, 2, 3, 9] * 3 + [8, 1, 2, 4, 9]
    table = DraftTable.build(replies)
    assert table.draft([5, 7, 1], tokens=3) == [2, 3, 9]  # (7, 1) -> 2, (7, 1, 2) -> 3, (1, 2, 3) -> 9
    assert table.draft([8, 1, 2], tokens=2) == [4, 9]  # the longer context decides: (8, 1, 2) -> 4
    assert table.draft([6, 1, 2], tokens=1) == [3]  # (6, 1, 2) never seen: (1, 2) -> 3 three times of four
    assert table.draft([6], tokens=4) == []  # nothing ends with it
    assert table.draft([5, 7, 1], tokens=0) == []
    # a next token that followed its context less often than min_share ends the draft
    assert table.draft([1, 2], tokens=3, min_share=0.8) == []
    assert table.draft([1, 2], tokens=3, min_share=0.7) == [3, 9]  # (2, 3, 9) -> 7 two times of three
    assert table.draft([1, 2], tokens=3, min_share=0.6) == [3, 9, 7]


def test_a_draft_of_tokens_beyond_numpy_small_ints_matches_its_context() -> None:
    rng = np.random.default_rng(0)
    replies = rng.integers(0, 50_257, 2_000)
    table = DraftTable.build(replies)
    start = 700
    assert table.draft(replies[:start], tokens=6, min_share=0.0) == replies[start : start + 6].tolist()


def test_a_table_of_longer_contexts_keys_on_them_and_keeps_its_order(tmp_path: Path) -> None:
    replies = [1, 2, 3, 4, 9] * 3 + [5, 2, 3, 4, 8] * 2
    three, four = DraftTable.build(replies, order=3), DraftTable.build(replies, order=4)
    assert three.draft([5, 2, 3, 4], tokens=1) == [9]  # (2, 3, 4) -> 9 three times of five
    assert four.draft([5, 2, 3, 4], tokens=1) == [8]  # (5, 2, 3, 4) -> 8 every time
    four.save(tmp_path)
    loaded = DraftTable.load(tmp_path)
    assert loaded is not None and loaded.order == 4 and loaded.draft([5, 2, 3, 4], tokens=1) == [8]


def test_a_large_table_keeps_its_most_frequent_contexts() -> None:
    replies = [1, 2, 3] * 50 + [4, 5, 6, 7, 8, 9]  # (1, 2, 3) many times, the rest once
    full, small = DraftTable.build(replies), DraftTable.build(replies, max_rows=9)
    assert len(full) > 9 and len(small) == 9  # the 9 contexts of (1, 2, 3) seen ~50 times each
    assert small.draft([3, 1], tokens=4) == full.draft([3, 1], tokens=4) == [2, 3, 1, 2]
    assert small.draft([5, 6], tokens=2) == [] and full.draft([5, 6], tokens=2) == [7, 8]
    assert int(small.follow.max()) < len(small)  # links only to rows it kept


def test_the_table_is_kept_in_the_folder_and_a_broken_one_is_named(tmp_path: Path) -> None:
    table = DraftTable.build([3, 4, 5, 3, 4, 6, 3, 4, 5])
    path = table.save(tmp_path)
    assert path == tmp_path / DRAFTS_FILE
    loaded = DraftTable.load(tmp_path)
    assert loaded is not None and len(loaded) == len(table)
    assert loaded.draft([3, 4], tokens=2) == table.draft([3, 4], tokens=2) == [5, 3]
    assert DraftTable.load(tmp_path / "elsewhere") is None  # no table: drafting falls back
    path.write_bytes(b"not a zip")
    with pytest.raises(ModelFolderError, match=DRAFTS_FILE) as raised:
        DraftTable.load(tmp_path)
    assert "chatbot train" in str(raised.value.hint)
    np.savez(path, keys=np.zeros(2, np.uint64), nexts=np.zeros(2, np.int32))
    with pytest.raises(ModelFolderError, match="not a draft table"):
        DraftTable.load(tmp_path)


def test_training_writes_the_agent_turns_with_the_tokens_before_them(tmp_path: Path) -> None:
    # two examples: the learnt runs (agent turns, stop token 0 included) and what comes before
    dataset = {
        "input_ids": [[50, 51, 52, 10, 11, 0, 53, 54, 12, 0], [55, 56, 57, 58, 10, 11, 0]],
        "labels": [
            [IGNORE, IGNORE, IGNORE, 10, 11, 0, IGNORE, IGNORE, 12, 0],
            [IGNORE, IGNORE, IGNORE, IGNORE, 10, 11, 0],
        ],
    }
    write_card(tmp_path, new_card(name="drafts", base_model="tiny", description="a test"))
    entry = write_drafts(tmp_path, dataset, lambda line: None)
    # runs with up to 4 tokens before each: [50 51 52 10 11 0] [11 0 53 54 12 0] [55 56 57 58 10 11 0]
    assert entry["agent_turns"] == 3 and entry["tokens"] == 19
    assert read_card(tmp_path)["drafts"] == entry
    table = DraftTable.load(tmp_path)
    assert table is not None
    assert table.draft([57, 58], tokens=3) == [10, 11, 0]
    assert table.draft([53, 54], tokens=2) == [12, 0]


def test_a_folder_with_a_table_drafts_by_default(tiny_model_dir: Path, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    short = EngineConfig(generation=GenerationConfig(max_new_tokens=8))
    monkeypatch.delenv("CHATBOT_DRAFT_TOKENS", raising=False)
    with Engine.from_folder(folder, config=short) as engine:
        assert engine.generator.draft_tokens == 0  # no table: the lookups alone do not pay
    prompt = ModelFolder(folder).encode("where is my parcel")
    DraftTable.build(prompt * 3).save(folder)
    with Engine.from_folder(folder, config=short) as engine:
        assert engine.generator.draft_tokens == SUGGESTED_DRAFT_TOKENS
        assert engine.generator.drafts is not None
    monkeypatch.setenv("CHATBOT_DRAFT_TOKENS", "0")  # the setting still turns it off
    with Engine.from_folder(folder, config=short) as engine:
        assert engine.generator.draft_tokens == 0


def test_the_engine_streams_the_same_replies_with_drafts_as_without(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from training.export.fused_graph import build_variant

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    build_variant(folder, "cpu-fp32")  # exact arithmetic: a drafted step computes what single steps do
    messages = ["where is my parcel?", "I want a refund for order 1234", "thanks, bye"]
    config = EngineConfig(generation=GenerationConfig(max_new_tokens=40))

    def replies(store: Path) -> tuple[list[str], int]:
        with Engine.from_folder(folder, store=store, config=config, variant="cpu-fp32") as engine:
            conversation = engine.start()
            texts = ["".join(engine.stream(conversation.id, message)) for message in messages]
            return texts, engine.generator.accepted_tokens

    monkeypatch.setenv("CHATBOT_DRAFT_TOKENS", "0")
    plain, _ = replies(tmp_path / "plain.db")
    # the model's own replies as its "training replies": drafts that greedy decoding keeps
    encoded = [ModelFolder(folder).encode(text) for text in plain]
    DraftTable.build(np.concatenate(encoded)).save(folder)
    monkeypatch.delenv("CHATBOT_DRAFT_TOKENS")
    drafted, accepted = replies(tmp_path / "drafted.db")
    assert drafted == plain
    assert accepted > 0


def test_the_metrics_count_drafted_tokens_accepted_and_rejected(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = ModelFolder(folder)
    DraftTable.build(model.encode("your parcel is on its way and will arrive tomorrow") * 2).save(folder)
    config = EngineConfig(generation=GenerationConfig(max_new_tokens=30))
    with Engine.from_folder(folder, config=config) as engine:
        engine.reply(engine.start().id, "where is my parcel?")
        scheduler, metrics = engine.generator, engine.metrics.render().decode()
    assert scheduler.verify_steps > 0  # the table drafted (right or wrong) for this reply
    counts = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("chatbot_draft")
    }
    assert counts['chatbot_draft_tokens_total{outcome="accepted"}'] == scheduler.accepted_tokens
    rejected = scheduler.drafted_tokens - scheduler.accepted_tokens
    assert counts['chatbot_draft_tokens_total{outcome="rejected"}'] == rejected
    assert counts["chatbot_draft_steps_total"] == scheduler.verify_steps


def test_replaying_drafting_counts_the_steps_the_scheduler_would_take() -> None:
    from training.evaluation.draft_policy import Policy, replay

    prompts = [[1, 2, 3], [1, 2, 3]]
    replies = [[10, 11, 12, 13, 14, 15, 0], [10, 11, 12, 13, 99, 15, 0]]
    table = DraftTable.build([3, 10, 11, 12, 13, 14, 15, 0], order=4)
    steps = replay(Policy(order=4, tokens=8, share=0.5), table, prompts, replies)
    # first reply: after the prefill's 10, one step drafts 11..15 (the budget's last token is the
    # step's own pick, 0) and keeps them all; second: the same draft kept up to 13, the step's
    # pick 99; nothing follows 99 anywhere, so 15 and 0 come from plain steps
    assert steps.tolist() == [2, 0, 0, 0, 0, 2, 0, 0, 0]  # 4 steps for 12 tokens


def test_drafts_of_replies_together_are_cut_to_the_positions_a_step_may_feed() -> None:
    from chatbot.drafting import DRAFT_POSITIONS, batch_draft_tokens

    assert batch_draft_tokens(1, 8) == 8  # a reply alone drafts what it may
    assert batch_draft_tokens(4, 8, positions=64) == 8 and batch_draft_tokens(8, 8, positions=64) == 7
    assert batch_draft_tokens(32, 8, positions=64) == 1  # 32 rows of 2 positions
    assert batch_draft_tokens(33, 8, positions=64) == 0  # a plain step
    assert batch_draft_tokens(2, 8) == min(8, DRAFT_POSITIONS // 2 - 1)


def test_replaying_drafting_in_batches_takes_the_steps_the_scheduler_would() -> None:
    from training.evaluation.draft_policy import Policy, replay_batch

    prompts = [[1, 2, 3], [1, 2, 3]]
    replies = [[10, 11, 12, 13, 14, 15, 0], [10, 11, 12, 13, 99, 15, 0]]
    table = DraftTable.build([3, 10, 11, 12, 13, 14, 15, 0], order=4)
    policy = Policy(order=4, tokens=8, share=0.5)
    # (rows, positions a row) of each step; plainly, six steps of both replies
    assert replay_batch(Policy(4, 0, 0.5), table, prompts, replies, 2) == [(2, 1)] * 6
    # together: both draft 11..15 in one step of 6 positions; the first keeps it all and ends, the
    # second keeps 11..13 and takes 99, then goes on alone and plainly (nothing follows 99)
    assert replay_batch(policy, table, prompts, replies, 2) == [(2, 6), (1, 1), (1, 1)]
    # within 4 positions a step, each of the two drafts one token a step
    assert replay_batch(policy, table, prompts, replies, 2, positions=4) == [(2, 2)] * 3 + [(1, 1)]
    # one at a time: the replay of a reply alone (test above), reply after reply
    assert replay_batch(policy, table, prompts, replies, 1) == [(1, 6), (1, 6), (1, 1), (1, 1)]
