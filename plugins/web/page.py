"""The chat page: a Gradio Blocks app that talks to the engine and keeps no state of its own.

Every handler finds the visitor's conversation from the request (the session cookie, else the
Gradio session of an API client) and reads or writes it through the engine; the store is the
source of truth, so a reload, a second tab or a restarted server shows the same conversation.
Nothing is shared between visitors but the engine.

The API endpoints a script can call with ``gradio_client`` (``Client(url).view_api()``):

``/chat`` (message) streams the conversation as the reply is written; ``/history`` returns it;
``/new_conversation`` starts over; ``/feedback`` (index, "up" | "down") rates the reply at that
position of the conversation, as the thumbs in the page do; ``/talk_to_a_person`` asks a person
from the support team in (the "Talk to a person" button).

While a person has the conversation the bot stays quiet: the customer's messages are stored for
them, and the page reads the conversation every :data:`REFRESH_S` seconds, so a staff member's
answer (stored on any replica) shows without a reload, marked as written by a person.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio reads it

import gradio as gr

from chatbot import ChatbotError, Conversation, Engine, UnknownConversation, WithAPerson, customer_message
from plugins.web.access import conversation_id, session_token

ChatMessage = dict[str, Any]
LIKE, DISLIKE = "Like", "Dislike"  # the two feedback options Gradio draws as thumbs

log = logging.getLogger("chatbot.web")
REFRESH_S = 2.0  # how often a page whose conversation a person has reads it again
_FOCUS_BOX = "() => { document.querySelector('#message textarea')?.focus(); }"


@dataclass(frozen=True)
class PageSettings:
    """What the page says; everything else comes from the engine."""

    title: str = "Support chat"
    description: str = ""
    examples: tuple[str, ...] = ()
    handover_text: str = "A person from our support team will take over this conversation shortly."
    placeholder: str = "Type your message and press Enter"
    person_mark: str = "a person from our support team"  # under each reply a person wrote
    with_person_text: str = "A person from our support team has your conversation and answers here."


@dataclass
class _Shown:
    """The conversation as the page draws it, with the stored message behind each entry."""

    messages: list[ChatMessage]
    message_ids: list[int]
    feedback: list[str | None]  # one per assistant message, for Gradio's thumbs


class ChatPage:
    """The handlers of the page and the Blocks that wires them."""

    def __init__(self, engine: Engine, settings: PageSettings) -> None:
        self.engine = engine
        self.settings = settings

    # -- the page ------------------------------------------------------------------------

    def blocks(self) -> gr.Blocks:
        settings = self.settings
        with gr.Blocks(title=settings.title, analytics_enabled=False, fill_height=True) as blocks:
            heading = f"## {settings.title}"
            gr.Markdown(f"{heading}\n{settings.description}" if settings.description else heading)
            chat = gr.Chatbot(
                show_label=False,
                elem_id="chat",
                scale=1,
                height="70vh",
                feedback_options=(LIKE, DISLIKE),
                buttons=["copy"],  # no share button: nothing leaves this server
                placeholder=None if settings.examples else "How can we help?",
            )
            box = gr.Textbox(
                show_label=False,
                placeholder=settings.placeholder,
                elem_id="message",
                autofocus=True,
                interactive=False,  # until the stored conversation is on the page (see `ready`)
                submit_btn=True,
                lines=1,
                max_lines=8,
            )
            with gr.Row():
                new = gr.Button(
                    "New conversation", elem_id="new-conversation", size="sm", variant="secondary"
                )
                person = gr.Button(
                    "Talk to a person", elem_id="talk-to-a-person", size="sm", variant="secondary"
                )
            watch = gr.Timer(REFRESH_S, active=False)  # on while a person is asked in or has it

            fast: dict[str, Any] = {"concurrency_limit": None, "show_progress": "hidden"}
            blocks.load(self.history, None, chat, api_name="history", **fast).then(
                self.ready, None, [chat, box, watch], api_visibility="private", **fast
            ).then(None, js=_FOCUS_BOX)  # the box was disabled when autofocus ran
            person.click(self.talk_to_a_person, None, [chat, watch], api_name="talk_to_a_person", **fast)
            watch.tick(self.refresh, None, [chat, watch], api_visibility="private", **fast)
            box.submit(self.chat, box, [chat, box], api_name="chat", concurrency_id="reply")
            chat.example_select(self.example, None, box, api_visibility="private", **fast).then(
                self.chat, box, [chat, box], api_visibility="private", concurrency_id="reply"
            )
            chat.like(self.like, None, None, api_visibility="private", **fast)
            new.click(self.new_conversation, None, chat, api_name="new_conversation", **fast)
            chat.clear(self.new_conversation, None, chat, api_visibility="private", **fast)  # its bin icon
            gr.api(self.feedback, api_name="feedback", concurrency_limit=None)
        return blocks

    # -- handlers ------------------------------------------------------------------------

    def history(self, request: gr.Request) -> gr.Chatbot:
        """The visitor's conversation as stored (on page load: this is what survives a reload).

        It never fails: the page opens its message box (`ready`) only after it, so a store that
        does not answer is said in the chat instead, and the visitor may still try to write."""
        try:
            return self._update(self._stored(request))
        except ChatbotError as error:  # the store does not answer (the engine counted and logged it)
            notice: list[Any] = [_notice(error, "Your conversation could not be loaded")]
        except Exception:  # a bug: logged whole, and the page stays usable
            log.exception("the conversation could not be loaded")
            notice = [_notice(None, "Your conversation could not be loaded")]
        return gr.Chatbot(value=notice)

    def ready(self, request: gr.Request) -> tuple[gr.Chatbot, gr.Textbox, gr.Timer]:
        """The history is shown: only now may the visitor send (an example or a typed message).
        The page keeps reading the conversation while a person is asked in or has it.

        A message sent before the history arrived would be wiped off the page by it: the
        history read the store before the message was in it and lands after the reply."""
        examples: list[Any] | None = [{"text": text} for text in self.settings.examples] or None
        return gr.Chatbot(examples=examples), gr.Textbox(interactive=True), self._watching(request)

    def chat(self, text: str | None, request: gr.Request) -> Iterator[tuple[Any, Any]]:
        """Send ``text`` and stream the reply into the page."""
        if not text or not text.strip():
            yield gr.skip(), gr.skip()  # empty input sends nothing
            return
        try:
            conversation = self.engine.start(self._conversation_id(request), metadata={"channel": "web"})
            shown = self._shown(conversation)
        except ChatbotError as error:  # the store does not answer: say so, keep the text in the box
            yield [_notice(error)], gr.skip()
            return
        try:
            stream = self.engine.stream(conversation.id, text, client=_client(request))
        except WithAPerson:  # stored for the person who has the conversation: the bot stays quiet
            yield self._with_note(conversation.id, self.settings.with_person_text), ""
            return
        except ChatbotError as error:  # refused before anything was stored: keep the text in the box
            yield [*shown.messages, _notice(error)], gr.skip()
            return
        messages = [*shown.messages, {"role": "user", "content": text}]
        written = ""
        yield [*messages, _assistant("…")], ""  # the message is on its way: empty the box
        with stream:
            try:
                for delta in stream:
                    written += delta
                    yield [*messages, _assistant(written)], gr.skip()
            except ChatbotError as error:
                yield [*messages, _assistant(written), _notice(error)], gr.skip()
                return
        yield self._update(self.engine.get(conversation.id)), gr.skip()

    def talk_to_a_person(self, request: gr.Request) -> tuple[gr.Chatbot, gr.Timer]:
        """The customer asks for a person: the conversation joins the support team's queue."""
        try:
            conversation = self.engine.start(self._conversation_id(request), metadata={"channel": "web"})
            handover = self.engine.request_person(conversation.id, "asked")
        except ChatbotError as error:
            notice: list[Any] = [_notice(error, "Not asked")]
            return gr.Chatbot(value=notice), gr.Timer(active=False)
        text = self.settings.with_person_text if handover.state == "taken" else self.settings.handover_text
        return self._with_note(conversation.id, text), gr.Timer(active=True)

    def _watching(self, request: gr.Request) -> gr.Timer:
        """Whether the page keeps reading the conversation: while a person is asked in or has it."""
        try:
            handover = self.engine.handover(self._conversation_id(request))
        except ChatbotError:
            return gr.Timer(active=False)
        return gr.Timer(active=handover is not None and handover.open)

    def refresh(self, request: gr.Request) -> tuple[Any, gr.Timer]:
        """A tick while a person is asked in: the stored conversation once a person has it (the bot
        is quiet then, so nothing streaming is overwritten); the timer stops when it is handed back."""
        key = self._conversation_id(request)
        try:
            handover = self.engine.handover(key)
            if handover is None or not handover.open:
                return self._update(self._stored(request)), gr.Timer(active=False)
            if handover.state != "taken":
                return gr.skip(), gr.skip()
            return self._update(self.engine.get(key)), gr.skip()
        except ChatbotError:  # the store does not answer now: try again at the next tick
            return gr.skip(), gr.skip()

    def example(self, selected: gr.SelectData) -> str:
        """An example question clicked: it goes into the box, then out as a message."""
        value = selected.value
        return str(value.get("text", "") if isinstance(value, dict) else value)

    def new_conversation(self, request: gr.Request) -> gr.Chatbot:
        """Start over; the earlier turns stay in the store (for audit and for training)."""
        conversation = self._stored(request)
        if conversation.messages:
            self.engine.reset(conversation.id)
            conversation = self.engine.get(conversation.id)
        return self._update(conversation)

    def like(self, data: gr.LikeData, request: gr.Request) -> None:
        """A thumb clicked in the page."""
        if isinstance(data.index, int) and isinstance(data.liked, bool):
            self._rate(request, data.index, "up" if data.liked else "down", shown_as=data.value)
        # a thumb clicked off again: the earlier rating stays (every rating is kept)

    def feedback(self, index: int, rating: Literal["up", "down"], request: gr.Request) -> str:
        """Rate the reply at position ``index`` of the conversation (as ``/history`` lists it)."""
        return self._rate(request, int(index), rating)

    # -- helpers -------------------------------------------------------------------------

    def _conversation_id(self, request: gr.Request) -> str:
        """The browser's conversation (its session cookie), else the API client's Gradio session."""
        token = session_token(request.headers.get("cookie"))
        return conversation_id(token if token is not None else f"gradio-session:{request.session_hash}")

    def _stored(self, request: gr.Request) -> Conversation:
        """The visitor's conversation, or an empty one (not stored) before the first message."""
        key = self._conversation_id(request)
        try:
            return self.engine.get(key)
        except UnknownConversation:
            return Conversation(key, datetime.now(UTC))

    def _shown(self, conversation: Conversation) -> _Shown:
        ratings = self._ratings(conversation.id) if conversation.messages else {}
        shown = _Shown([], [], [])
        for message in conversation.messages:
            if message.role == "user":
                shown.messages.append({"role": "user", "content": message.content})
            elif message.role == "assistant":
                note = self.settings.handover_text if message.meta.get("handover") else ""
                if message.meta.get("author") == "person":
                    note = f"— {self.settings.person_mark}"
                text = "\n\n".join(part for part in (message.content, f"*{note}*" if note else "") if part)
                shown.messages.append(_assistant(text))
                shown.feedback.append(ratings.get(message.id))
            else:
                continue
            shown.message_ids.append(message.id)
        return shown

    def _ratings(self, conversation_id: str) -> dict[int, str]:
        latest = self.engine.ratings(conversation_id)
        return {message_id: LIKE if rating > 0 else DISLIKE for message_id, rating in latest.items()}

    def _with_note(self, conversation_id: str, note: str) -> gr.Chatbot:
        """The stored conversation with ``note`` under it (said, not stored)."""
        shown = self._shown(self.engine.get(conversation_id))
        messages: list[Any] = [*shown.messages, _assistant(f"*{note}*")]
        return gr.Chatbot(value=messages, feedback_value=shown.feedback)

    def _update(self, conversation: Conversation) -> gr.Chatbot:
        shown = self._shown(conversation)
        messages: list[Any] = list(shown.messages)  # gradio's MessageDict is a TypedDict
        return gr.Chatbot(value=messages, feedback_value=shown.feedback)

    def _rate(self, request: gr.Request, index: int, rating: str, *, shown_as: Any = None) -> str:
        shown = self._shown(self._stored(request))
        if not 0 <= index < len(shown.messages) or shown.messages[index]["role"] != "assistant":
            raise gr.Error(f"there is no reply at position {index} of this conversation")
        if shown_as is not None and _text(shown_as) != shown.messages[index]["content"]:
            raise gr.Error("that reply is no longer in this conversation (it was started over)")
        try:
            self.engine.feedback(shown.message_ids[index], rating)
        except ChatbotError as error:
            raise gr.Error(str(error)) from error
        return f"thanks: reply {index} rated {rating}"


def _assistant(text: str) -> ChatMessage:
    return {"role": "assistant", "content": text}


def _notice(error: ChatbotError | None, what: str = "Not sent") -> ChatMessage:
    """An error shown in the chat (``None``: one that is ours); not part of the stored conversation."""
    why = customer_message(error) if error is not None else "something went wrong on our side; try again soon"
    return {"role": "assistant", "content": f"⚠️ {what}: {why}"}


def _text(value: Any) -> str:
    """The text of a message as Gradio hands it back (a string, a message or a list of parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return _text(value.get("content", value.get("text", value.get("value", ""))))
    if isinstance(value, list):
        return "".join(_text(part) for part in value)
    return str(value)


def _client(request: gr.Request) -> str:
    """Who sent a message, for the per-client rate limit: the first address of X-Forwarded-For
    (set by the proxy in front, deploy/nginx), else the peer's address."""
    forwarded = (request.headers.get("x-forwarded-for") or "").split(",")[0].strip()
    peer = request.client.host if request.client else ""
    return f"web:{forwarded or peer}"
