"""The `chatbot` command, run as a user runs it: a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chatbot import SQLStore

ROOT = Path(__file__).resolve().parents[1]
# every command: the core's, then those training registers through the entry points
COMMANDS = (
    "chat",
    "serve",
    "plugins",
    "models",
    "feedback",
    "db",
    "config",
    "train",
    "export",
    "eval",
    "bench",
    "demo",
)


def chatbot(*args: str, stdin: str = "", env: dict[str, str] | None = None, timeout: int = 180):
    return subprocess.run(
        [sys.executable, "-m", "chatbot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_the_console_script_is_installed():
    script = Path(sys.executable).parent / "chatbot"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in COMMANDS:
        assert f"    {command} " in result.stdout, command


def test_chat_holds_a_conversation_and_keeps_it_in_the_store(tiny_model_dir, tmp_path):
    store = tmp_path / "conversations.db"
    result = chatbot(
        "chat",
        str(tiny_model_dir),
        "--store",
        str(store),
        "--conversation",
        "cli-1",
        "--max-new-tokens",
        "8",
        "--system-prompt",
        "You answer for the shop.",
        stdin="Hello, where is my order?\nIt is 12345 😀\n/history\n/quit\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("bot> ") == 2
    assert "system prompt: You answer for the shop." in result.stdout
    assert "conversation cli-1" in result.stdout
    assert "user: It is 12345 😀" in result.stdout
    with SQLStore.sqlite(store) as reopened:
        turns = reopened.get_conversation("cli-1").messages
    assert [m.role for m in turns] == ["user", "assistant", "user", "assistant"]
    again = chatbot(
        "chat",
        str(tiny_model_dir),
        "--store",
        str(store),
        "--conversation",
        "cli-1",
        "--max-new-tokens",
        "8",
        stdin="/reset\nhi again\n",
    )
    assert again.returncode == 0, again.stderr
    assert "you> Hello, where is my order?" in again.stdout  # the history is shown on resume
    assert "[conversation reset]" in again.stdout


def test_chat_reports_bad_input_and_goes_on(tiny_model_dir, tmp_path):
    result = chatbot(
        "chat",
        str(tiny_model_dir),
        "--store",
        str(tmp_path / "c.db"),
        "--max-message-chars",
        "20",
        "--max-new-tokens",
        "4",
        stdin="this message is far longer than twenty chars\nshort one\n",
    )
    assert result.returncode == 0, result.stderr
    assert "[not sent: the message is 44 characters long; the limit is 20" in result.stdout
    assert result.stdout.count("bot> ") == 1


def test_a_missing_export_names_the_file_and_the_command(tiny_model_dir, tmp_path):
    broken = shutil.copytree(tiny_model_dir, tmp_path / "model")
    shutil.rmtree(broken / "onnx")
    result = chatbot("chat", str(broken), "--store", str(tmp_path / "c.db"))
    assert result.returncode == 1
    assert "has no onnx/model.onnx" in result.stderr
    assert f"chatbot export {broken}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (
            lambda f: (f / "onnx" / "cpu-int8" / "model.onnx").write_bytes(b"not a model"),
            "cannot be loaded by ONNX Runtime",
        ),
        (lambda f: (f / "config.json").write_text("{broken"), "config.json is not readable JSON"),
        (lambda f: (f / "tokenizer.json").write_text("{}"), "tokenizer.json is not a valid tokenizer"),
    ],
    ids=["onnx", "config", "tokenizer"],
)
def test_a_broken_file_is_named_before_anything_is_served(tiny_model_dir, tmp_path, damage, expected):
    broken = shutil.copytree(tiny_model_dir, tmp_path / "model")
    damage(broken)
    result = chatbot("chat", str(broken), "--store", str(tmp_path / "c.db"), stdin="hello\n")
    assert result.returncode == 1
    assert expected in result.stderr and "you>" not in result.stdout
    assert "Traceback" not in result.stderr


def test_a_missing_folder_says_how_to_make_one(tmp_path):
    result = chatbot("chat", str(tmp_path / "nowhere"), "--store", str(tmp_path / "c.db"))
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "chatbot train" in result.stderr


def test_export_writes_the_onnx_model_and_records_parity(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "model")
    shutil.rmtree(folder / "onnx")
    result = chatbot("export", str(folder))
    assert result.returncode == 0, result.stderr
    assert "parity: max |ONNX - PyTorch| logit" in result.stdout
    card = json.loads((folder / "card.json").read_text())
    assert card["onnx"]["reference"]["parity"]["max_abs_diff"] <= 1e-3
    assert (folder / "onnx" / "model.onnx").is_file()


def test_plugins_lists_the_built_in_channels():
    result = chatbot("plugins")
    assert result.returncode == 0
    assert "terminal" in result.stdout and "plugins.terminal:TerminalChannel" in result.stdout


def test_a_third_party_channel_is_found_through_its_entry_point(tiny_model_dir, tmp_path):
    """A package we did not write registers a channel the documented way and gets served."""
    site = tmp_path / "site"
    (site / "echo_channel").mkdir(parents=True)
    (site / "echo_channel" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from chatbot import Channel

            class Echo(Channel):
                summary = "a third-party test channel"

                @classmethod
                def add_arguments(cls, parser):
                    parser.add_argument("--question", required=True)

                def run(self):
                    conversation = self.engine.start()
                    reply = self.engine.reply(conversation.id, self.options.question)
                    print("echo-channel replied", reply.reply_tokens > 0)
                    return 0
            """
        )
    )
    dist = site / "echo_channel-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-channel\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[chatbot.channels]\necho = echo_channel:Echo\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = chatbot("plugins", env=env)
    assert "echo" in listed.stdout and "a third-party test channel" in listed.stdout
    served = chatbot(
        "serve",
        "--channel",
        "echo",
        str(tiny_model_dir),
        "--store",
        str(tmp_path / "c.db"),
        "--question",
        "hello",
        "--max-new-tokens",
        "4",
        env=env,
    )
    assert served.returncode == 0, served.stderr
    assert "echo-channel replied True" in served.stdout


def _fake_distribution(site: Path, name: str, module: str, source: str, entry_points: str) -> dict[str, str]:
    """An installed third-party package (its module and dist-info) on a PYTHONPATH of its own."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(textwrap.dedent(source))
    dist = site / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_a_third_party_command_registers_like_the_training_ones(tmp_path):
    """A package registers a command under chatbot.commands; one whose plugin is broken is said on
    standard error and left out, and every other command still works."""
    env = _fake_distribution(
        tmp_path / "site",
        "hello-command",
        "hello_command",
        """
        from chatbot.commands import CommandSet, progress

        def register(commands: CommandSet) -> None:
            parser = commands.add("hello", help="greet someone (a third-party command)")
            parser.add_argument("--name", default="world")
            parser.set_defaults(run=run)

        def run(args) -> int:
            print(f"hello {args.name}")
            progress("said hello")
            return 0

        def broken(commands: CommandSet) -> None:
            raise RuntimeError("this plugin is broken")
        """,
        """
        [chatbot.commands]
        hello = hello_command:register
        broken = hello_command:broken
        missing = hello_command_gone:register
        """,
    )
    listed = chatbot("--help", env=env)
    assert listed.returncode == 0
    assert "greet someone (a third-party command)" in listed.stdout
    assert all(f"    {command} " in listed.stdout for command in COMMANDS)
    assert "the command 'broken' (hello_command:broken) could not be loaded: RuntimeError" in listed.stderr
    assert "the command 'missing'" in listed.stderr and "Traceback" not in listed.stderr
    ran = chatbot("hello", "--name", "Ada", env=env)
    assert ran.returncode == 0 and ran.stdout == "hello Ada\n" and "said hello" in ran.stderr


def test_an_unknown_channel_lists_the_known_ones(tiny_model_dir):
    result = chatbot("serve", "--channel", "carrier-pigeon", str(tiny_model_dir))
    assert result.returncode == 1
    assert "no channel named 'carrier-pigeon'" in result.stderr and "terminal" in result.stderr


def test_bad_settings_are_explained(tiny_model_dir, tmp_path):
    result = chatbot("chat", str(tiny_model_dir), "--store", str(tmp_path / "c.db"), "--top-p", "0")
    assert result.returncode == 1
    assert "top_p must be in (0, 1]" in result.stderr


SERVE_AND_LIST_MODULES = """
import sys
from chatbot.cli import main
code = main(sys.argv[1:])
heavy = sorted(m for m in ("torch", "transformers", "optimum", "datasets") if m in sys.modules)
print("heavy modules:", heavy, "exit", code)
"""


def test_serving_imports_neither_torch_nor_transformers(tiny_model_dir, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SERVE_AND_LIST_MODULES,
            "chat",
            str(tiny_model_dir),
            "--store",
            str(tmp_path / "c.db"),
            "--max-new-tokens",
            "4",
        ],
        input="Where is my order?\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "bot> " in result.stdout
    assert "heavy modules: [] exit 0" in result.stdout


def test_chat_says_when_the_rate_limit_refuses_a_message_and_goes_on(tiny_model_dir, tmp_path):
    result = chatbot(
        "chat",
        str(tiny_model_dir),
        "--store",
        str(tmp_path / "c.db"),
        "--rate-limit",
        "2",
        "--max-new-tokens",
        "4",
        stdin="one\ntwo\nthree\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("bot> ") == 2
    assert "too many messages from this conversation: the limit is 2 a minute" in result.stdout
