"""The default model: trained once from the bundled sample, then found in the cache."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from chatbot import ModelFolder
from chatbot.loader import INT4_MAX_PERPLEXITY_CHANGE, int4_serves
from training.demo.model import DemoRecipe, ensure_demo_model
from training.transcripts.readers import read_transcripts

TINY = DemoRecipe(conversations=120, size="tiny", epochs=1, batch_size=8, eval_replies=4)


def test_the_demo_model_is_trained_once_then_reused_and_chats(tmp_path: Path) -> None:
    root = tmp_path / "cache" / "chatbot" / "demo"
    messages: list[str] = []
    folder = ensure_demo_model(recipe=TINY, root=root, progress=messages.append)
    assert folder == root / "v1" and (folder / "onnx" / "model.onnx").is_file()
    assert (folder / "scope.npz").is_file()  # the out-of-scope signal of its training data
    assert (folder / "drafts.npz").is_file()  # speculative decoding's drafts: its training replies
    # the int4 graph with its perplexity, so "auto" serves it where int4 is the faster (chatbot.loader)
    model = ModelFolder(folder)
    assert {"cpu-int8", "cpu-int4"} <= set(model.variants)
    change = model.card["onnx"]["cpu-int4"]["perplexity"]["change"]
    assert abs(change) <= INT4_MAX_PERPLEXITY_CHANGE
    assert int4_serves(model, "vnni") and not int4_serves(model, "avx2")
    assert model.card["drafts"]["agent_turns"] > 0 and model.drafts is not None
    assert (root.parent / "demo-sample.jsonl").is_file()
    assert any("training the default model" in m for m in messages)
    again: list[str] = []
    assert ensure_demo_model(recipe=TINY, root=root, progress=again.append) == folder
    assert again == []  # found in the cache: no training

    result = subprocess.run(
        [sys.executable, "-m", "chatbot", "demo", "--channel", "terminal", "--max-new-tokens", "8"],
        input="where is my order?\n/quit\n",
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "CHATBOT_STORE": str(tmp_path / "c.db"),
        },
    )
    assert result.returncode == 0, result.stderr
    assert "synthetic shop" in result.stderr and "training the default model" not in result.stderr
    assert "where is my order?" in result.stdout


def test_a_cached_demo_model_without_a_draft_table_gets_one_and_chatbot_index_writes_both(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache" / "chatbot" / "demo"
    folder = ensure_demo_model(recipe=TINY, root=root, progress=lambda _: None)
    written = (folder / "drafts.npz").read_bytes()
    # a model cached by a version before draft tables: the next start indexes its sample, once
    (folder / "drafts.npz").unlink()
    messages: list[str] = []
    assert ensure_demo_model(recipe=TINY, root=root, progress=messages.append) == folder
    assert (folder / "drafts.npz").read_bytes() == written
    assert any("no draft table yet" in m for m in messages)
    assert not any("training the default model" in m for m in messages)  # seconds, not a training
    # `chatbot index` on a versions root: both indexes again, from the data its card names
    (folder / "drafts.npz").unlink()
    (folder / "scope.npz").unlink()
    index = [sys.executable, "-m", "chatbot", "index"]
    result = subprocess.run([*index, str(root)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (folder / "drafts.npz").read_bytes() == written and (folder / "scope.npz").is_file()
    assert "draft table of" in result.stdout
    # the data the card names is gone: said, with what to do
    sample = root.parent / "demo-sample.jsonl"
    sample.rename(tmp_path / "moved.jsonl")
    result = subprocess.run([*index, str(folder)], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "not there any more" in result.stderr and "--data" in result.stderr
    result = subprocess.run(
        [*index, str(folder), "--data", str(tmp_path / "moved.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # the policies replayed on held-out conversations, against the training split the card records
    from training.evaluation.draft_policy import Policy, batch_speedups, compare

    held_out = str(Path(__file__).parents[1] / "training" / "demo" / "held_out.jsonl")
    policies = [Policy(3, 6, 0.5), Policy(4, 8, 0.5)]
    found = compare(ModelFolder(folder), [held_out], policies, train_data=[str(tmp_path / "moved.jsonl")])
    assert [r["policy"] for r in found] == policies
    assert all(r["steps"] <= r["tokens"] and r["estimated_speedup"] > 0 for r in found)
    # and in batches, within two limits of positions a step
    moved = [str(tmp_path / "moved.jsonl")]
    together = batch_speedups(ModelFolder(folder), [held_out], policies[1], [1, 4], [8, 64], train_data=moved)
    assert [(r["rows"], r["positions"]) for r in together] == [(1, 8), (1, 64), (4, 8), (4, 64)]
    assert all(r["steps"] > 0 and r["estimated_speedup"] > 0 for r in together)


def test_the_demo_serves_the_web_chat_by_default(tmp_path: Path) -> None:
    root = tmp_path / "cache" / "chatbot" / "demo"
    ensure_demo_model(recipe=TINY, root=root, progress=lambda _: None)
    demo = subprocess.Popen(
        [sys.executable, "-m", "chatbot", "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={
            **os.environ,
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "CHATBOT_STORE": str(tmp_path / "c.db"),
        },
    )
    assert demo.stdout is not None
    try:
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if found := re.search(r"web chat on (http://\S+)", line):
                break
        else:
            raise AssertionError("".join(lines))
        with urllib.request.urlopen(found.group(1), timeout=30) as page:
            html = page.read().decode()
        assert page.status == 200 and "Support chat" in html
        assert "synthetic shop" in "".join(lines)
    finally:
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 0
        demo.stdout.close()


def test_the_bundled_held_out_set_labels_off_topic_questions() -> None:
    transcripts, report = read_transcripts(
        [Path(__file__).parents[1] / "training" / "demo" / "held_out.jsonl"]
    )
    assert not report.rejected and len(transcripts) == 56 and report.out_of_scope == 16
    labelled = [turn.content for t in transcripts for turn in t.turns if turn.out_of_scope]
    assert "What's the weather like?" in labelled and len(set(labelled)) == 16
