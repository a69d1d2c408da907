"""The Slack bot: a slack-bolt app that answers in threads through the engine.

What it answers: direct messages, mentions of the app, and later messages in a channel thread it
is already in. Each (team, channel, thread) is one engine conversation. Bolt acknowledges every
request at once (within Slack's 3 seconds) and runs the listener afterwards; the listener posts
a placeholder in the thread and edits it as the reply streams (at most every
``update_interval`` seconds), then writes the final text.

Every message is claimed in the engine's store (``slack:TEAM:CHANNEL:TS``) before it is
answered, so Slack's retries, the duplicate events of one message (a mention arrives as both
``app_mention`` and ``message``) and a restart in between never produce a second answer.

It never answers a bot (itself included) and ignores edits, deletions, joins and every other
message subtype. When the engine flags a reply for a person, the reply calls
``SLACK_HANDOVER_MENTION`` and the conversation joins the support team's queue (the engine's
handover, the same queue as the web chat's); the bot stays quiet in that thread while a person is
asked in, until someone runs ``/chatbot resume LINK`` (or ``/chatbot reset LINK`` to start over).
Meanwhile every message there is kept: a staff member's (:mod:`plugins.slack.staff`) as the
person's answer, anyone else's as the customer's. Handovers from the web chat go to the support
desk (:mod:`plugins.slack.desk`); replies are written by :mod:`plugins.slack.reply` (native
streaming, feedback buttons).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

from slack_bolt import App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler

from chatbot import (
    ChannelError,
    ChatbotError,
    Engine,
    HandoverError,
    UnknownConversation,
    customer_message,
)
from plugins.slack.desk import HAND_BACK_ACTION, Desk
from plugins.slack.reply import FEEDBACK_ACTION, PLACEHOLDER, Replies, rating_of
from plugins.slack.settings import SlackSettings
from plugins.slack.staff import Staff, staff_name
from plugins.slack.text import LINK, escape, plain_text

log = logging.getLogger("chatbot.slack")

WORDS = frozenset({None, "thread_broadcast", "file_share"})  # message subtypes that carry someone's words
HANDOVER = "handover"  # the metadata flag earlier releases set on a thread a person had: still honoured
USAGE = (
    "Usage: `{command} reset LINK` starts the thread's conversation over, `{command} resume LINK` "
    "lets me answer again after a handover, `{command} status LINK` says who has it. LINK is a "
    "message's link (its ⋮ menu > Copy link)."
)
_ARCHIVE_PATH = re.compile(r"/archives/([A-Z0-9]+)/p(\d{7,})")


@dataclass(frozen=True)
class BotSettings:
    """How the bot behaves; the credentials are in :class:`SlackSettings`."""

    update_interval: float = 1.0  # seconds between edits of a streaming reply
    handover_text: str = "A person from our team will take over from here."
    command: str = "/chatbot"


def thread_of_link(link: str) -> tuple[str, str]:
    """(channel, thread ts) of a Slack message link, e.g. ``https://x.slack.com/archives/C1/p1700000000000100``."""
    link = LINK.sub(lambda m: m.group(1), link.strip())
    found = _ARCHIVE_PATH.search(urlparse(link).path)
    if not found:
        raise ValueError(f"{link!r} is not a link to a Slack message")
    channel, digits = found.groups()
    thread = parse_qs(urlparse(link).query).get("thread_ts", [f"{digits[:-6]}.{digits[-6:]}"])[0]
    return channel, thread


def conversation_key(team: str, channel: str, thread_ts: str) -> str:
    """The engine's conversation id of a Slack thread."""
    return f"slack-{team}-{channel}-{thread_ts}"


@dataclass(frozen=True)
class _Thread:
    """Where a message was written, and by whom."""

    team: str
    channel: str
    thread: str
    user: str


class SlackBot:
    """The bolt app and its listeners; ``app`` is what an adapter (HTTP or Socket Mode) serves."""

    def __init__(self, engine: Engine, slack: SlackSettings, settings: BotSettings | None = None) -> None:
        self.engine = engine
        self.slack = slack
        self.settings = settings or BotSettings()
        self.client = web_client(slack.bot_token, slack.api_url)
        identity = _who_am_i(self.client)
        self.bot_user_id: str = identity["user_id"]
        self.bot_id: str = identity.get("bot_id") or ""
        self.team_id: str = identity.get("team_id") or ""
        bolt_log = logging.getLogger("chatbot.slack.bolt")
        # Bolt reads SLACK_BOT_TOKEN itself and warns that our client (which has it) wins: it does.
        bolt_log.addFilter(lambda record: "`token` will be unused" not in record.getMessage())
        self.app = App(
            client=self.client,
            signing_secret=slack.signing_secret or "",
            request_verification_enabled=slack.signing_secret is not None,
            token_verification_enabled=False,  # done above, with an error that says what to fix
            process_before_response=False,  # acknowledge first, answer after
            logger=bolt_log,
        )
        self.staff = Staff(self.client, users=slack.staff_users, group=slack.staff_group)
        self.replies = Replies(self.client)
        self.desk = (
            Desk(engine, self.client, slack.support_channel, self.staff, mention=slack.handover_mention)
            if slack.support_channel
            else None
        )
        self.app.event("app_mention")(self.on_event)
        self.app.event("message")(self.on_event)
        self.app.command(self.settings.command)(self.on_command)
        self.app.action(FEEDBACK_ACTION)(self.on_feedback)
        if self.desk is not None:
            self.app.action(HAND_BACK_ACTION)(self.desk.on_hand_back)
        self.app.error(self.on_error)

    def start(self) -> None:
        """Start watching the engine's queue for the support channel (when one is set)."""
        if self.desk is not None:
            self.desk.start()

    def stop(self) -> None:
        """Stop watching the queue; waits for a poll in progress."""
        if self.desk is not None:
            self.desk.stop()

    # -- events --------------------------------------------------------------------------

    def on_event(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        """A message or a mention: answer it in its thread, once; in a thread a person is asked
        into, store it for them (a customer's) or as the person's answer (a staff member's)."""
        user, text, channel, ts = (
            event.get("user"),
            event.get("text") or "",
            event.get("channel"),
            event.get("ts"),
        )
        if event.get("bot_id") or event.get("subtype") not in WORDS or not user or user == self.bot_user_id:
            return  # bots (ourselves included), edits, deletions, joins...
        if not channel or not ts:
            return
        team = str(body.get("team_id") or event.get("team") or self.team_id)
        thread = str(event.get("thread_ts") or ts)
        key = conversation_key(team, channel, thread)
        words = plain_text(text, bot_user_id=self.bot_user_id)
        if self.desk is not None and "thread_ts" in event and self.desk.owns(channel, thread):
            if self.engine.claim(f"slack:{team}:{channel}:{ts}"):  # a web customer's thread at the desk
                self.desk.on_message(user, words, channel, thread, ts)
            return
        if event.get("type") == "message" and event.get("channel_type") != "im":
            if f"<@{self.bot_user_id}>" in text:
                return  # a mention: its app_mention event answers it
            if "thread_ts" not in event or not self._knows(key):
                return  # channel chatter that is not in a thread the bot is in
        if not self.engine.claim(f"slack:{team}:{channel}:{ts}"):
            log.info("already answered %s/%s (a retry or a duplicate event)", channel, ts)
            return
        conversation = self.engine.start(
            key, metadata={"channel": "slack", "team": team, "slack_channel": channel, "thread_ts": thread}
        )
        where = _Thread(team, channel, thread, user)
        if self._with_a_person(key, conversation.metadata):
            self._to_the_person(key, where, words)
            return
        self._answer(key, where, words, f"slack:{team}:{user}")

    def _to_the_person(self, key: str, where: _Thread, words: str) -> None:
        """Keep a message in a thread a person is asked into: a staff member's is the agent's turn
        (they take the thread), anyone else's is the customer's, stored for the person."""
        handover = self.engine.handover(key)
        if handover is None or not handover.open:  # flagged by an earlier release: join the queue
            self.engine.request_person(key, "flagged")
        try:
            if where.user in self.staff:
                staff = staff_name(where.user)
                self.engine.take(key, staff)
                self.engine.person_reply(key, staff, words)
                log.info("%s answered thread %s/%s", staff, where.channel, where.thread)
            else:
                self.engine.message_for_a_person(key, words, client=f"slack:{where.team}:{where.user}")
        except HandoverError as error:
            self._tell(where, f"Not stored in the conversation: {error.message}. {error.hint or ''}".strip())
        except ChatbotError as error:
            self._tell(where, f"Not stored in the conversation: {customer_message(error)}")

    def _tell(self, where: _Thread, text: str) -> None:
        """A note in the thread only ``where.user`` sees."""
        self.client.chat_postEphemeral(
            channel=where.channel, user=where.user, thread_ts=where.thread, text=escape(text)
        )

    def _with_a_person(self, key: str, metadata: dict[str, Any]) -> bool:
        """Whether a person is asked into the thread's conversation (or has it)."""
        handover = self.engine.handover(key)
        return bool(metadata.get(HANDOVER)) or (handover is not None and handover.open)

    def _back_to_the_bot(self, key: str, user: str) -> str | None:
        """Hand the conversation back to the bot as ``user``; why not, when another person has it."""
        handover = self.engine.handover(key)
        if handover is not None and handover.open:
            try:
                self.engine.hand_back(key, user)
            except HandoverError as error:
                return f"Not done: {error.message}."
        self.engine.update_metadata(key, {HANDOVER: None})
        return None

    def _knows(self, key: str) -> bool:
        try:
            self.engine.get(key)
        except UnknownConversation:
            return False
        return True

    def _answer(self, key: str, where: _Thread, text: str, sender: str) -> None:
        writer = self.replies.open(where.channel, where.thread, team=where.team, user=where.user)
        try:
            stream = self.engine.stream(key, text, client=sender)
        except ChatbotError as error:
            writer.finish(escape(f"Sorry, I can't take that message: {customer_message(error)}"), None)
            return
        written, last = "", time.monotonic()
        with stream:
            try:
                for delta in stream:
                    written += delta
                    if written.strip() and time.monotonic() - last >= self.settings.update_interval:
                        writer.update(escape(written))
                        last = time.monotonic()
            except ChatbotError as error:  # e.g. every reply slot stayed busy: nothing was stored
                sorry = escape(f"Sorry, I can't answer right now: {customer_message(error)}")
                writer.finish(f"{escape(written)}\n\n{sorry}" if written.strip() else sorry, None)
                return
        reply = stream.reply
        assert reply is not None
        final = escape(reply.text) or PLACEHOLDER
        if reply.handover:  # the engine put the conversation in the queue
            call = f"{self.slack.handover_mention} " if self.slack.handover_mention else ""
            final = f"{final}\n\n{call}{escape(self.settings.handover_text)}"
            log.info("handed thread %s/%s over to a person", where.channel, where.thread)
        writer.finish(final, reply.message_id)

    # -- the slash command ---------------------------------------------------------------

    def on_command(self, ack: Callable[..., None], command: dict[str, Any]) -> None:
        """``/chatbot reset|resume|status LINK``: answered at once, only to whoever ran it."""
        ack(self.command_reply(command))

    def command_reply(self, command: dict[str, Any]) -> str:
        words = (command.get("text") or "").split()
        usage = USAGE.format(command=self.settings.command)
        if len(words) != 2 or words[0] not in ("reset", "resume", "status"):
            return usage
        try:
            channel, thread = thread_of_link(words[1])
        except ValueError as error:
            return f"{error}. {usage}"
        team = str(command.get("team_id") or self.team_id)
        key = conversation_key(team, channel, thread)
        if self.desk is not None and self.desk.owns(channel, thread):
            key = self.desk.conversation_of(thread)  # a web customer's thread at the desk
        try:
            conversation = self.engine.get(key)
        except UnknownConversation:
            return "I have no conversation in that thread."
        action = words[0]
        user = staff_name(str(command.get("user_id", "")))
        if action in ("reset", "resume"):
            refused = self._back_to_the_bot(key, user)
            if refused is not None:
                return refused
        if action == "reset":
            self.engine.reset(key)
            return "Done: that thread's conversation starts over, and I answer there again."
        if action == "resume":
            return "Done: I answer in that thread again."
        turns = len(conversation.messages)
        quiet = self._with_a_person(key, conversation.metadata)
        who = "a person has it (I stay quiet)" if quiet else "I am answering"
        return f"That thread: {turns} turns since the last reset; {who}."

    # -- feedback buttons ------------------------------------------------------------------

    def on_feedback(self, ack: Callable[..., None], body: dict[str, Any]) -> None:
        """A click on a reply's feedback buttons: stored like the web chat's thumbs."""
        ack()
        action = (body.get("actions") or [{}])[0]
        try:
            message_id, rating = rating_of(action.get("value"))
            self.engine.feedback(message_id, rating)
        except (ValueError, ChatbotError) as error:
            log.warning("a feedback click was not stored: %s", error)
            return
        log.info("feedback %s on message %d from Slack", rating, message_id)

    def on_error(self, error: Exception) -> None:
        log.error("a Slack request failed: %s: %s", type(error).__name__, error)


def web_client(token: str, api_url: str) -> WebClient:
    """A Web API client that waits out HTTP 429 (``Retry-After``) and retries dropped connections."""
    return WebClient(
        token=token,
        base_url=api_url,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=3),
        ],
    )


def _who_am_i(client: WebClient) -> dict[str, Any]:
    try:
        return dict(client.auth_test().data)  # type: ignore[arg-type]
    except SlackApiError as error:
        code = error.response.get("error", "unknown error") if error.response else "unknown error"
        raise ChannelError(
            f"Slack refused SLACK_BOT_TOKEN ({code})",
            hint="copy the Bot User OAuth Token from OAuth & Permissions again, and reinstall the app",
        ) from None
    except OSError as error:
        raise ChannelError(
            f"cannot reach Slack's Web API at {client.base_url} ({type(error).__name__})",
            hint="check the network, or SLACK_API_URL",
        ) from None
