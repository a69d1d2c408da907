"""Writing a reply into a Slack thread as it is generated, and its feedback buttons.

Slack's native streaming comes first (``chat.startStream``, ``chat.appendStream``,
``chat.stopStream``: the reply grows in place, as Slack's own AI apps do). Where the workspace
does not offer it (an error such as ``unknown_method`` or ``not_allowed`` at the start), the
writer remembers that and posts a placeholder (``…``) that it edits instead (``chat.update``).
Either way the finished reply carries Slack's feedback buttons (a ``feedback_buttons`` element
in a ``context_actions`` block) whose values name the engine's message: ``up:42`` / ``down:42``.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

log = logging.getLogger("chatbot.slack")

PLACEHOLDER = "…"
FEEDBACK_ACTION = "chatbot_feedback"
SECTION_CHARS = 3000  # Slack's limit on a section block's text
# Answers that mean "this workspace, app or token has no native streaming": not asked again.
NO_STREAMING = frozenset(
    {
        "unknown_method",
        "not_allowed",
        "not_allowed_token_type",
        "missing_scope",
        "feature_not_enabled",
        "method_deprecated",
        "not_implemented",
    }
)
_RATING = re.compile(r"(up|down):(\d{1,18})")


def feedback_block(message_id: int) -> dict[str, Any]:
    """Slack's thumbs under a reply: a ``context_actions`` block with ``feedback_buttons``."""

    def button(label: str, rating: str) -> dict[str, Any]:
        text = {"type": "plain_text", "text": label}
        return {
            "text": text,
            "accessibility_label": f"{label}: rate this answer",
            "value": f"{rating}:{message_id}",
        }

    return {
        "type": "context_actions",
        "elements": [
            {
                "type": "feedback_buttons",
                "action_id": FEEDBACK_ACTION,
                "positive_button": button("Good answer", "up"),
                "negative_button": button("Bad answer", "down"),
            }
        ],
    }


def rating_of(value: object) -> tuple[int, str]:
    """(message id, "up" or "down") from a feedback button's value; ValueError when it is not one."""
    found = _RATING.fullmatch(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError(f"{value!r:.60} is not a feedback button's value (up:ID or down:ID)")
    return int(found.group(2)), found.group(1)


def text_blocks(text: str) -> list[dict[str, Any]]:
    """``text`` as section blocks (mrkdwn, each within Slack's 3000 characters)."""
    parts = [text[i : i + SECTION_CHARS] for i in range(0, len(text), SECTION_CHARS)] or [PLACEHOLDER]
    return [{"type": "section", "text": {"type": "mrkdwn", "text": part}} for part in parts]


class Writer(Protocol):
    """One reply in a thread, written as it grows."""

    def update(self, written: str) -> None:
        """Show ``written``, the whole (escaped) text so far."""

    def finish(self, text: str, message_id: int | None) -> None:
        """Show the final ``text``; with the engine's ``message_id``, the feedback buttons too."""


class Replies:
    """Opens a :class:`Writer` per reply: native streaming until the workspace refuses it."""

    def __init__(self, client: WebClient) -> None:
        self.client = client
        self.native = True  # until Slack says this workspace has no native streaming

    def open(self, channel: str, thread_ts: str, *, team: str, user: str) -> Writer:
        if self.native:
            try:
                started = self.client.chat_startStream(
                    channel=channel, thread_ts=thread_ts, recipient_team_id=team, recipient_user_id=user
                )
                return _Streamed(self.client, channel, str(started["ts"]))
            except SlackApiError as error:
                code = str(error.response.get("error", "")) if error.response else ""
                if code in NO_STREAMING:
                    self.native = False
                    log.info("Slack has no native streaming here (%s): editing a placeholder instead", code)
                else:
                    log.warning("chat.startStream failed (%s): editing a placeholder for this reply", code)
        posted = self.client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=PLACEHOLDER)
        return _Edited(self.client, channel, str(posted["ts"]))


class _Edited:
    """The fallback: a placeholder edited with ``chat.update``."""

    def __init__(self, client: WebClient, channel: str, ts: str) -> None:
        self.client, self.channel, self.ts = client, channel, ts

    def update(self, written: str) -> None:
        self.client.chat_update(channel=self.channel, ts=self.ts, text=f"{written} {PLACEHOLDER}")

    def finish(self, text: str, message_id: int | None) -> None:
        text = text or PLACEHOLDER
        if message_id is None:
            self.client.chat_update(channel=self.channel, ts=self.ts, text=text)
            return
        blocks = [*text_blocks(text), feedback_block(message_id)]
        self.client.chat_update(channel=self.channel, ts=self.ts, text=text, blocks=blocks)


class _Streamed:
    """Slack's native stream: appended as it grows, stopped with the buttons. When Slack ends the
    stream early (it expired, say), the message is finished with ``chat.update`` instead."""

    def __init__(self, client: WebClient, channel: str, ts: str) -> None:
        self.client, self.channel, self.ts = client, channel, ts
        self.sent = ""  # what the stream shows so far
        self.broken = False

    def update(self, written: str) -> None:
        if self.broken or not written.startswith(self.sent) or written == self.sent:
            return
        try:
            self.client.chat_appendStream(
                channel=self.channel, ts=self.ts, markdown_text=written[len(self.sent) :]
            )
        except SlackApiError as error:
            self._broke(error)
            return
        self.sent = written

    def finish(self, text: str, message_id: int | None) -> None:
        blocks = [feedback_block(message_id)] if message_id is not None else None
        if not self.broken and text.startswith(self.sent):
            try:
                self.client.chat_stopStream(
                    channel=self.channel,
                    ts=self.ts,
                    markdown_text=text[len(self.sent) :] or None,
                    blocks=blocks,
                )
                return
            except SlackApiError as error:
                self._broke(error)
        _Edited(self.client, self.channel, self.ts).finish(text, message_id)

    def _broke(self, error: SlackApiError) -> None:
        self.broken = True
        code = error.response.get("error", "") if error.response else ""
        log.warning("Slack ended the reply's stream (%s): finishing it with chat.update", code)
