"""`chatbot train` for real: small runs on real files, the folder they write, retraining, resuming.

The runs use the tiny size on a small sample so the file stays within a minute or two on two
cores; what they check is the whole path a user takes, not model quality.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from served import free_port

from chatbot.engine import Engine
from chatbot.versions import ModelVersions
from training.demo.corpus import write_sample

DATA = Path(__file__).parent / "data" / "transcripts"
FORMATS = [DATA / "chats.jsonl", DATA / "helpdesk.csv", DATA / "transcripts.txt"]
FAST = ["--from-scratch", "tiny", "--batch-size", "8", "--eval-replies", "8"]
SYSTEM = "You answer for the shop."


def chatbot(
    *args: str | os.PathLike[str], cwd: Path | None = None, **kwargs
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(Path(cwd or ".") / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "chatbot", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=env,
        **kwargs,
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def sample(work: Path) -> Path:
    return write_sample(work / "sample.jsonl", n=160, seed=1, pii_rate=0.2)


@pytest.fixture(scope="module")
def first_run(work: Path, sample: Path) -> subprocess.CompletedProcess[str]:
    result = chatbot(
        "train", "--data", sample, *FORMATS, "--out", "models", "--epochs", "2", *FAST,
        "--system-prompt", SYSTEM, cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def test_a_run_writes_a_complete_current_version(work: Path, first_run) -> None:
    models = ModelVersions(root=work / "models")
    current = models.current()
    assert current is not None and current.version == "v1"
    folder = current.path
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "onnx/model.onnx",
        "report.md",
        "loss.png",
        "scope.npz",
        "scope.json",
    ):
        assert (folder / name).is_file(), name
    assert (folder / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (folder / "training_args.bin").exists()
    assert not (work / "models" / ".train").exists()  # checkpoints are cleaned up after success


def test_the_card_records_data_training_metrics_and_versions(work: Path, first_run) -> None:
    card = json.loads((work / "models" / "current" / "card.json").read_text())
    data = card["data"]
    assert len(data["files"]) == 4 and data["kept"] == data["read"] == 166
    assert data["redacted"]["email"] > 0 and data["redacted"]["phone"] > 0  # the sample had PII in it
    assert data["conversations"]["validation"] > 0 and len(data["fingerprint"]) == 16
    assert card["training"]["steps"] > 0 and card["training"]["processes"] == 1
    assert card["training"]["system_prompt"] == SYSTEM
    assert card["metrics"]["validation_loss"] > 0
    assert {"rouge_l", "bleu"} <= set(json.dumps(card["metrics"]["evaluation"]).replace('"', " ").split())
    assert card["onnx"]["reference"]["parity"]["max_abs_diff"] < 1e-3
    assert isinstance(card["examples"], list)  # opening questions the web chat offers
    assert card["versions"]["transformers"]
    assert {"train_s", "export_s", "evaluate_s"} <= set(card["durations"])
    scope = card["scope"]  # the training split's customer turns (the sample has no labelled ones)
    assert 0 < scope["distinct_turns_indexed"] <= scope["customer_turns"]
    assert scope["labelled_out_of_scope_left_out"] == 0


def test_the_report_shows_data_curves_and_evaluation(work: Path, first_run) -> None:
    report = (work / "models" / "current" / "report.md").read_text()
    for heading in ("## Data", "## Training", "## Loss", "## Evaluation", "## Export"):
        assert heading in report
    assert "![training and validation loss](loss.png)" in report
    assert "retrieval" in report.lower()
    assert "wrote" in first_run.stderr and "validation loss" in first_run.stderr


def test_the_trained_model_serves_and_stops_at_the_end_of_its_turn(work: Path, first_run) -> None:
    with Engine.from_folder(work / "models", store=":memory:") as engine:
        conversation = engine.start()
        reply = engine.reply(conversation.id, "hello")
    assert reply.text and "<|" not in reply.text
    assert conversation.system_prompt == SYSTEM  # served as it was trained
    assert reply.similarity is not None and 0.0 <= reply.similarity <= 1.0  # its scope index is served


def test_retraining_from_the_current_version_then_rolling_back(work: Path, first_run) -> None:
    new = write_sample(work / "new.jsonl", n=40, seed=7)
    result = chatbot(
        "train", "--base", "models/current", "--data", new, "--out", "models", "--epochs", "1",
        "--eval-replies", "0", cwd=work,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    models = ModelVersions(root=work / "models")
    current = models.current()
    assert current is not None and current.version == "v2"
    card = json.loads((current.path / "card.json").read_text())
    assert card["base_model"] == "models/current"
    assert card["training"]["system_prompt"] == SYSTEM  # the base's, carried over
    assert f"system prompt: {SYSTEM!r}, as models/current was trained" in result.stderr
    rollback = chatbot("models", "rollback", "--root", "models", cwd=work)
    assert rollback.returncode == 0, rollback.stderr
    current = models.current()
    assert current is not None and current.version == "v1"


def test_bad_data_gets_a_clear_error(work: Path, tmp_path: Path) -> None:
    missing = chatbot("train", "--data", tmp_path / "nothing.jsonl", *FAST, "--out", tmp_path / "m", cwd=work)
    assert missing.returncode == 1 and "nothing.jsonl" in missing.stderr
    columns = chatbot("train", "--data", DATA / "bad_columns.csv", *FAST, "--out", tmp_path / "m", cwd=work)
    assert columns.returncode == 1 and "--csv-conversation COLUMN" in columns.stderr
    strict = chatbot(
        "train", "--data", DATA / "malformed.jsonl", "--strict", *FAST, "--out", tmp_path / "m", cwd=work
    )
    assert strict.returncode == 1 and "malformed.jsonl:" in strict.stderr
    neither = chatbot("train", "--data", DATA / "chats.jsonl", cwd=work)
    assert neither.returncode == 2 and "--base" in neither.stderr


def test_a_base_without_chat_tokens_gets_them(tmp_path: Path, sample: Path) -> None:
    """A plain GPT-2 (as from a hub) lacks our role tokens and template: they are added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from training.fitting.train import TrainOptions, train

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    raw.train_from_iterator(["hello there", "where is my order"], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    base = tmp_path / "plain-gpt2"
    tokenizer.save_pretrained(base)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128)
    GPT2LMHeadModel(config).save_pretrained(base)
    options = TrainOptions(
        data=(str(sample),), out=tmp_path / "models", base=str(base), epochs=1, eval_replies=0
    )
    result = train(options, progress=lambda message: None)
    assert result.folder is not None
    saved = json.loads((result.folder / "tokenizer_config.json").read_text())
    assert "<|end|>" in saved["chat_template"] and "<|user|>" in saved["extra_special_tokens"]
    assert json.loads((result.folder / "config.json").read_text())["vocab_size"] == len(tokenizer) + 4


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    data = write_sample(tmp_path / "data.jsonl", n=200, seed=3)
    args = ["train", "--data", data, "--out", "models", *FAST, "--epochs", "2", "--evals-per-epoch", "4"]
    process = subprocess.Popen(
        [sys.executable, "-m", "chatbot", *map(str, args)],
        # Ctrl+C works even when the suite itself runs in the background (where SIGINT is ignored,
        # and a child would inherit that: Python then never raises KeyboardInterrupt)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    checkpoints = tmp_path / "models" / ".train" / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("checkpoint-*/trainer_state.json")) and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert not (tmp_path / "models" / "v1").exists()
    again = chatbot("train", *args[1:], "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    card = json.loads((tmp_path / "models" / "v1" / "card.json").read_text())
    steps = card["training"]["steps"]
    assert steps > 0
    fresh = chatbot("train", *args[1:], "--resume", cwd=tmp_path)
    assert fresh.returncode == 1 and "no interrupted run" in fresh.stderr


def test_two_cpu_processes_under_torchrun_train_one_model_together(tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 2 -m chatbot train ...` (gloo on CPUs): one version, written once,
    in half the optimizer steps of one process (each step sees both processes' batches)."""
    data = write_sample(tmp_path / "data.jsonl", n=120, seed=1)
    port = free_port()
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(port),
    ]
    args = ["train", "--data", str(data), "--out", "models", *FAST, "--epochs", "1", "--eval-replies", "0"]
    done = subprocess.run(
        [*torchrun, "-m", "chatbot", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if p.name.startswith("v")) == ["v1"]
    card = json.loads((tmp_path / "models" / "v1" / "card.json").read_text())
    training = card["training"]
    train_examples = int(re.search(r"train: \d+ conversations, (\d+) examples", done.stderr).group(1))
    assert training["processes"] == 2 and 0 < card["metrics"]["train_loss"] < 10
    assert training["steps"] == math.ceil(train_examples / (training["batch_size"] * 2))
