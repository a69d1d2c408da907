"""A conversation in the terminal: `chatbot chat MODEL_DIR`.

Lines typed at ``you>`` go to the engine; the reply streams after ``bot>``. Commands start with a
slash: /reset starts over, /history shows the conversation, /quit (or end of input) leaves.
The conversation is kept in the store, so ``--conversation NAME`` resumes it later.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import TextIO

from chatbot import Channel, ChatbotError, Engine

HELP = "commands: /reset starts over, /history shows the conversation, /quit leaves"


class TerminalChannel(Channel):
    """Chat with the bot in a terminal (reads standard input, writes standard output)."""

    summary = "a conversation in the terminal (chatbot chat MODEL_DIR)"

    def __init__(
        self,
        engine: Engine,
        options: argparse.Namespace,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
    ) -> None:
        super().__init__(engine, options)
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--conversation",
            metavar="ID",
            help="resume (or start) the conversation with this id; default: a new one",
        )

    def run(self) -> int:
        conversation = self.engine.start(getattr(self.options, "conversation", None))
        interactive = self.stdin.isatty()
        self._say(f"chatting with {self.engine.folder.name} (conversation {conversation.id})")
        if conversation.system_prompt:
            self._say(f"system prompt: {textwrap.shorten(conversation.system_prompt, 200)}")
        self._say(HELP)
        for message in conversation.messages:
            self._say(f"{'you' if message.role == 'user' else 'bot'}> {message.content}")
        while (line := self._read(interactive)) is not None:
            text = line.rstrip("\n")
            if text.strip() == "/quit":
                break
            if text.strip().startswith("/"):
                self._command(conversation.id, text.strip())
            elif text.strip():
                self._answer(conversation.id, text)
        return 0

    def _read(self, interactive: bool) -> str | None:
        self.stdout.write("you> ")
        self.stdout.flush()
        line = self.stdin.readline()
        if not line:
            self.stdout.write("\n")
            return None
        if not interactive:
            self.stdout.write(line if line.endswith("\n") else line + "\n")  # echo piped input
        return line

    def _answer(self, conversation_id: str, text: str) -> None:
        try:
            stream = self.engine.stream(conversation_id, text)
            self.stdout.write("bot> ")
            for delta in stream:
                self.stdout.write(delta)
                self.stdout.flush()
        except ChatbotError as error:
            self._say(f"[not sent: {error}]")
            return
        reply = stream.reply
        assert reply is not None
        self.stdout.write("\n")
        if reply.handover:
            why = {"flagged": "low confidence", "out-of-scope": "unlike what the bot was trained on"}
            reasons = (reply.handover_reason or "flagged").split(", ")
            self._say(f"[a person should take over here: {'; '.join(why.get(r, r) for r in reasons)}]")
        self.stdout.flush()

    def _command(self, conversation_id: str, command: str) -> None:
        if command == "/reset":
            self.engine.reset(conversation_id)
            self._say("[conversation reset]")
        elif command == "/history":
            for message in self.engine.get(conversation_id).messages:
                self._say(f"  {message.role}: {message.content}")
        else:
            self._say(f"[unknown command {command}] {HELP}")

    def _say(self, line: str) -> None:
        self.stdout.write(line + "\n")
        self.stdout.flush()
