"""The support desk in Slack: handovers from the other channels (the web chat) get a thread in
``SLACK_SUPPORT_CHANNEL``, where the support team reads the conversation and answers.

A background thread reads the engine's queue every :data:`POLL_S` seconds. For each open
handover of a conversation that is not a Slack thread, it opens a thread (once per request,
across replicas: :meth:`Engine.claim`) with the reason and the history, and afterwards copies
each new turn of the conversation into it (the customer's messages, the bot's replies), also
once. Which thread belongs to which conversation is kept in the conversation's metadata
(``slack_desk``), so every replica finds it.

In the thread, a message that starts with ``!reply`` goes to the customer: the staff member
takes the conversation (if nobody has) and the rest of the message is stored as their answer,
which the web page shows within seconds. Every other message stays among the team. The "Hand
back to the bot" button (or ``/chatbot resume LINK``) gives the conversation back to the bot.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from chatbot import ChatbotError, Conversation, Engine, Handover, HandoverError, Message, customer_message
from plugins.slack.staff import Staff, staff_name
from plugins.slack.text import escape

log = logging.getLogger("chatbot.slack.desk")

POLL_S = 2.0  # seconds between reads of the engine's queue
DESK = "slack_desk"  # the conversation's metadata: {"channel", "thread_ts", "copied": last message id}
HAND_BACK_ACTION = "chatbot_hand_back"
REPLY_MARKER = "!reply"
HISTORY_TURNS = 30  # the most turns a new thread shows
HISTORY_CHARS = 12_000  # and characters (Slack takes 40,000 in a message)
_TO_THE_CUSTOMER = re.compile(rf"{re.escape(REPLY_MARKER)}(?:\s+|$)", re.IGNORECASE)
_REASONS = {"asked": "The customer asked for a person", "flagged": "The bot was unsure of its answer"}


class Desk:
    """Mirrors the engine's queue into one Slack channel, and carries staff answers back."""

    def __init__(
        self,
        engine: Engine,
        client: WebClient,
        channel: str,
        staff: Staff,
        *,
        mention: str = "",
        poll_s: float = POLL_S,
    ) -> None:
        self.engine = engine
        self.client = client
        self.channel = channel
        self.staff = staff
        self.mention = mention
        self.poll_s = poll_s
        self._threads: dict[str, str] = {}  # thread ts in the channel -> conversation id
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- the watcher -----------------------------------------------------------------------

    def start(self) -> None:
        if self._watcher is None:
            self._stopping.clear()
            self._watcher = threading.Thread(target=self._watch, name="slack-desk", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        self._stopping.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.join(timeout=30)

    def _watch(self) -> None:
        while True:
            try:
                self.poll()
            except (ChatbotError, SlackApiError, OSError) as error:
                log.warning("reading the queue for %s failed (%s); trying again", self.channel, error)
            except Exception:  # a bug must not stop the desk for good: say it, and go on
                log.exception("the support desk's poll failed; trying again in %s s", self.poll_s)
            if self._stopping.wait(self.poll_s):
                return

    def poll(self) -> None:
        """One look at the queue: open threads for new requests, copy new turns into open ones."""
        for handover in self.engine.queue():
            conversation = self.engine.get(handover.conversation_id)
            if conversation.metadata.get("channel") == "slack":
                continue  # a Slack thread: the person answers in it
            desk = self._desk_of(conversation)
            asked = f"slack-desk:{conversation.id}:{handover.requested_at.isoformat()}"
            if self.engine.claim(asked):
                desk = self._open(conversation, handover, desk)
            if desk is not None:
                self._copy_new_turns(conversation, desk)

    def _desk_of(self, conversation: Conversation) -> dict[str, Any] | None:
        desk = conversation.metadata.get(DESK)
        if not isinstance(desk, dict) or desk.get("channel") != self.channel or not desk.get("thread_ts"):
            return None
        with self._lock:
            self._threads[str(desk["thread_ts"])] = conversation.id
        return desk

    def _open(
        self, conversation: Conversation, handover: Handover, desk: dict[str, Any] | None
    ) -> dict[str, Any]:
        """Post the request: a new thread with the history, or a note in the conversation's thread."""
        reason = _REASONS.get(handover.reason, f"Asked in: {handover.reason}")
        source = conversation.metadata.get("channel")
        where = f"the {escape(str(source))} chat" if source else "a chat"
        if desk is not None:
            self._post(desk["thread_ts"], f"{self.mention} {escape(reason)} again.".strip())
            return desk
        headline = (
            f"{self.mention} {escape(reason)} in {where} (conversation `{escape(conversation.id)}`)."
        ).strip()
        how = (
            f"Start a message with `{REPLY_MARKER}` to answer the customer; "
            "anything else here stays among the team."
        )
        root = self.client.chat_postMessage(
            channel=self.channel,
            text=headline,
            blocks=[
                {"type": "section", "text": {"type": "mrkdwn", "text": f"{headline}\n{how}"}},
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "action_id": HAND_BACK_ACTION,
                            "text": {"type": "plain_text", "text": "Hand back to the bot"},
                            "value": conversation.id,
                        }
                    ],
                },
            ],
        )
        thread = str(root["ts"])
        shown = conversation.messages[-HISTORY_TURNS:]
        history = "\n".join(_line(message) for message in shown)[-HISTORY_CHARS:]
        self._post(thread, history or "(no messages yet)")
        copied = conversation.messages[-1].id if conversation.messages else 0
        desk = {"channel": self.channel, "thread_ts": thread, "copied": copied}
        self.engine.update_metadata(conversation.id, {DESK: desk})
        with self._lock:
            self._threads[thread] = conversation.id
        log.info("opened a thread in %s for conversation %s", self.channel, conversation.id)
        return desk

    def _copy_new_turns(self, conversation: Conversation, desk: dict[str, Any]) -> None:
        """Copy the turns since the last copied one into the thread (each once, across replicas)."""
        copied = int(desk.get("copied") or 0)
        new = [m for m in conversation.messages if m.id > copied]
        for message in new:
            if not _ours(message) and self.engine.claim(f"slack-desk:copy:{message.id}"):
                self._post(desk["thread_ts"], _line(message))
        if new:
            self.engine.update_metadata(conversation.id, {DESK: {**desk, "copied": new[-1].id}})

    def _post(self, thread: str, text: str) -> None:
        self.client.chat_postMessage(channel=self.channel, thread_ts=thread, text=text)

    # -- what staff do in the channel ------------------------------------------------------

    def owns(self, channel: str, thread: str) -> bool:
        """Whether ``thread`` in ``channel`` is a conversation's thread at the desk."""
        if channel != self.channel:
            return False
        with self._lock:
            if thread in self._threads:
                return True
        for handover in self.engine.queue():  # another replica opened it: its metadata says so
            self._desk_of(self.engine.get(handover.conversation_id))
        with self._lock:
            return thread in self._threads

    def conversation_of(self, thread: str) -> str:
        """The conversation of a thread :meth:`owns`."""
        with self._lock:
            return self._threads[thread]

    def on_message(self, user: str, words: str, channel: str, thread: str, ts: str) -> None:
        """A message in a conversation's thread: sent to the customer when it starts with the marker."""
        marked = _TO_THE_CUSTOMER.match(words)
        if marked is None:
            return  # a note among the team
        conversation_id = self.conversation_of(thread)
        answer = words[marked.end() :]
        tell = _teller(self.client, channel, user, thread)
        if not self._is_staff(user, tell):
            return
        staff = staff_name(user)
        try:
            self.engine.take(conversation_id, staff)
            self.engine.person_reply(conversation_id, staff, answer)
        except HandoverError as error:
            tell(f"Not sent to the customer: {error.message}. {error.hint or ''}".strip())
            return
        except ChatbotError as error:
            tell(f"Not sent to the customer: {customer_message(error)}")
            return
        self.client.reactions_add(channel=channel, timestamp=ts, name="white_check_mark")
        log.info("%s answered conversation %s from %s", staff, conversation_id, channel)

    def on_hand_back(self, ack: Callable[..., None], body: dict[str, Any]) -> None:
        """The "Hand back to the bot" button of a conversation's thread."""
        ack()
        user = str((body.get("user") or {}).get("id") or "")
        container = body.get("container") or {}
        thread = str(container.get("thread_ts") or container.get("message_ts") or "")
        conversation_id = str((body.get("actions") or [{}])[0].get("value") or "")
        tell = _teller(self.client, self.channel, user, thread)
        if not user or not conversation_id or not self._is_staff(user, tell):
            return
        try:
            self.engine.hand_back(conversation_id, staff_name(user))
        except ChatbotError as error:
            tell(f"Not handed back: {error.message}. {error.hint or ''}".strip())
            return
        self._post(thread, f"<@{user}> handed the conversation back to the bot.")

    def _is_staff(self, user: str, tell: Callable[[str], None]) -> bool:
        """Anyone in the channel counts unless SLACK_STAFF_USERS / SLACK_STAFF_GROUP name the team."""
        if not self.staff.configured or user in self.staff:
            return True
        tell("Only the support team answers customers (SLACK_STAFF_USERS or SLACK_STAFF_GROUP).")
        return False


def _teller(client: WebClient, channel: str, user: str, thread: str) -> Callable[[str], None]:
    """A note in the thread that only ``user`` sees."""

    def tell(text: str) -> None:
        client.chat_postEphemeral(channel=channel, user=user, thread_ts=thread or None, text=escape(text))

    return tell


def _ours(message: Message) -> bool:
    """A reply a staff member wrote in Slack: already in the thread."""
    return message.meta.get("author") == "person" and str(message.meta.get("staff", "")).startswith("slack:")


def _line(message: Message) -> str:
    if message.role == "user":
        who = "Customer"
    elif message.meta.get("author") == "person":
        who = f"Staff ({message.meta.get('staff', '?')})"
    else:
        who = "Bot"
    return f"*{who}:* {escape(message.content)}"
