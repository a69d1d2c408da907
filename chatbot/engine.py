"""The engine: conversations in, replies out. The only API a channel may use.

>>> engine = Engine.from_folder("models/current", store="conversations.db")   # doctest: +SKIP
>>> conversation = engine.start()                                             # doctest: +SKIP
>>> engine.reply(conversation.id, "Where is my order?").text                  # doctest: +SKIP
>>> for delta in engine.stream(conversation.id, "Thanks!"):                   # doctest: +SKIP
...     print(delta, end="")

A user turn is committed to the store before generation starts and the reply after it, so a
process killed mid-reply loses no acknowledged turn. Many conversations may be served from many
threads at once; turns of one conversation are serialised so their order is kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import unicodedata
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chatbot.errors import (
    Busy,
    ChatbotError,
    HandoverError,
    InvalidMessage,
    RateLimited,
    StoreError,
    WithAPerson,
)
from chatbot.folder import ModelFolder
from chatbot.generation import Generator, OnnxGenerator, Token
from chatbot.limits import RateLimiter, ReplySlots
from chatbot.loader import load_generator
from chatbot.logs import event
from chatbot.metrics import Metrics
from chatbot.prompt import Prompt, build_prompt
from chatbot.scheduler import BatchingGenerator
from chatbot.store import SQLStore, Store, open_store
from chatbot.textstream import IncrementalDecoder
from chatbot.types import (
    HANDOVER_STATES,
    Conversation,
    Correction,
    Feedback,
    FinishReason,
    GenerationConfig,
    Handover,
    Message,
    Reply,
    Review,
)
from chatbot.versions import model_folder

log = logging.getLogger("chatbot.engine")

ALLOWED_CONTROL = {"\n", "\r", "\t"}
RATINGS = {"up": 1, "down": -1, 1: 1, -1: -1}


@dataclass(frozen=True)
class EngineConfig:
    """How the engine answers. Every field has a default that suits a first run."""

    generation: GenerationConfig = field(default_factory=GenerationConfig)  # reply settings
    # for conversations started without their own; None: the one the model was trained with, if any
    system_prompt: str | None = None
    max_message_chars: int = 4000  # longer user messages are refused, not cut
    handover_below: float | None = -2.5  # mean token log-prob under which a person takes over
    # similarity of the customer's message to the nearest training customer turn (0..1) under
    # which a person takes over; needs the folder's scope index (chatbot.scope), else it is off
    handover_unlike_below: float | None = 0.3
    # limits (None = off): messages a minute per conversation and per client (what a channel
    # names the sender: an address, a Slack user), replies generated at once, and how long a
    # reply may wait for a slot before it is refused
    conversation_rate: float | None = 20.0
    client_rate: float | None = 60.0
    max_concurrent_replies: int | None = 64
    queue_timeout_s: float = 30.0


class _ConversationLock:
    """A lock per conversation id, weakly kept so idle conversations cost no memory."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


class ReplyStream:
    """Text deltas of a reply as they are generated; ``reply`` holds the record once it is done.

    Closing the stream early (a customer left) stores what was written so far, marked
    ``finish_reason="cancelled"``.
    """

    def __init__(self, answer: Callable[[ReplyStream], Iterator[str]]) -> None:
        self.reply: Reply | None = None
        self._deltas = answer(self)

    def __iter__(self) -> Iterator[str]:
        return self._deltas

    def close(self) -> None:
        self._deltas.close()  # type: ignore[attr-defined]

    def __enter__(self) -> ReplyStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Engine:
    """Serves one model folder over one conversation store.

    Build it with :meth:`from_folder`, or pass the parts yourself (a :class:`Generator` other than
    ONNX Runtime, for example the transformers reference in tests).
    """

    def __init__(
        self,
        *,
        folder: ModelFolder,
        store: Store,
        generator: Generator | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        self.folder = folder
        self.store = store
        self.generator: Generator = generator or OnnxGenerator(folder)
        self.config = config or EngineConfig()
        # what conversations started without their own get: the configured one, else the model's
        self.system_prompt = (
            self.config.system_prompt if self.config.system_prompt is not None else folder.system_prompt
        )
        self.scope = folder.scope  # None: the folder has no index, the out-of-scope signal is off
        self.metrics = Metrics()
        limits = self.config
        self._conversation_rate = (
            RateLimiter(limits.conversation_rate, what="this conversation")
            if limits.conversation_rate
            else None
        )
        self._client_rate = RateLimiter(limits.client_rate, what="you") if limits.client_rate else None
        self._slots = (
            ReplySlots(limits.max_concurrent_replies, limits.queue_timeout_s)
            if limits.max_concurrent_replies
            else None
        )
        self._in_flight = 0  # replies being generated (guarded by _idle)
        self._idle = threading.Condition()
        self.metrics.active.set_function(lambda: float(self._in_flight))
        if isinstance(self.generator, BatchingGenerator):
            self.metrics.watch_scheduler(self.generator)
        self._locks: weakref.WeakValueDictionary[str, _ConversationLock] = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike[str],
        *,
        store: Store | str | os.PathLike[str] | None = None,
        device: str | None = None,
        variant: str | None = None,
        config: EngineConfig | None = None,
    ) -> Engine:
        """An engine on the model folder at ``path``.

        ``store`` is a :class:`Store`, a SQLite file path or a SQLAlchemy URL; ``None`` keeps
        conversations in memory only. ``device`` is "auto" (default), "cpu" or "cuda";
        ``variant`` picks the graph ("auto" by default: the folder's fast variant for the device,
        served through the batching scheduler; see :func:`chatbot.loader.choose_variant`).
        """
        folder = model_folder(path)
        generator = load_generator(folder, device=device, variant=variant)
        if store is None:
            store = SQLStore.memory()
        elif isinstance(store, (str, os.PathLike)):
            store = open_store(store)
        return cls(folder=folder, store=store, generator=generator, config=config)

    # -- conversations -------------------------------------------------------------------

    def start(
        self,
        conversation_id: str | None = None,
        *,
        system_prompt: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Conversation:
        """Start a conversation, or resume it when ``conversation_id`` is already stored."""
        conversation_id = conversation_id or uuid.uuid4().hex
        with self._store_failures(conversation_id):
            return self.store.open_conversation(
                conversation_id,
                system_prompt=system_prompt if system_prompt is not None else self.system_prompt,
                metadata=dict(metadata or {}),
            )

    def get(self, conversation_id: str) -> Conversation:
        """The conversation and its history since the last reset."""
        with self._store_failures(conversation_id):
            return self.store.get_conversation(conversation_id)

    def ratings(self, conversation_id: str) -> dict[int, int]:
        """The latest rating (+1 or -1) of each rated reply in the conversation, by message id."""
        with self._store_failures(conversation_id):
            return {item.message_id: item.rating for item in self.store.feedback(conversation_id)}

    def reset(self, conversation_id: str) -> None:
        """Start the conversation over; earlier turns stay in the store for audit and training."""
        with self._lock(conversation_id), self._store_failures(conversation_id):
            self.store.reset(conversation_id)

    def update_metadata(self, conversation_id: str, changes: Mapping[str, Any]) -> Conversation:
        """Merge ``changes`` into the conversation's metadata; a ``None`` value removes a key.

        Channels keep their own state of a conversation there (e.g. Slack's "a person took over").
        """
        with self._store_failures(conversation_id):
            return self.store.update_metadata(conversation_id, dict(changes))

    def claim(self, key: str) -> bool:
        """True the first time ``key`` is claimed in this store, False ever after.

        A channel claims each delivered event before answering it, so an event delivered twice
        (a retry, a second replica, a restart in between) is answered once.
        """
        with self._store_failures(None):
            return self.store.claim(key)

    def feedback(self, message_id: int, rating: int | str, *, comment: str | None = None) -> Feedback:
        """Record a thumbs up (+1 / "up") or down (-1 / "down") on an assistant reply."""
        if rating not in RATINGS:
            raise InvalidMessage(f"a rating is 'up' or 'down' (or +1 / -1), not {rating!r}")
        with self._store_failures(None):
            recorded = self.store.add_feedback(message_id, RATINGS[rating], comment=comment)
        label = "up" if recorded.rating > 0 else "down"
        self.metrics.feedback.labels(label).inc()
        event(log, "feedback", recorded.conversation_id, message_id=message_id, rating=label)
        return recorded

    # -- people in the loop ----------------------------------------------------------------

    def request_person(self, conversation_id: str, reason: str = "asked") -> Handover:
        """Ask a person from the support team into the conversation (the customer asked, or a
        channel decided; a flagged reply asks by itself). It waits in :meth:`queue` until a
        staff member :meth:`take` s it; until then the bot goes on answering."""
        with self._store_failures(conversation_id):
            handover = self.store.request_handover(conversation_id, reason)
        event(log, "handover", conversation_id, state=handover.state, reason=handover.reason)
        return handover

    def queue(self) -> tuple[Handover, ...]:
        """Conversations waiting for a person or held by one, oldest request first."""
        with self._store_failures(None):
            return self.store.handovers()

    def handover(self, conversation_id: str) -> Handover | None:
        """The conversation's handover, if a person was ever asked in."""
        with self._store_failures(conversation_id):
            return self.store.handover(conversation_id)

    def take(self, conversation_id: str, staff: str) -> Handover:
        """``staff`` takes the conversation: the bot stops answering it (:class:`WithAPerson`) and
        the staff member answers with :meth:`person_reply`. :class:`HandoverError` names the
        holder when another staff member has it."""
        with self._store_failures(conversation_id):
            handover = self.store.take_handover(conversation_id, staff)
        event(log, "handover", conversation_id, state=handover.state, staff=staff)
        return handover

    def person_reply(self, conversation_id: str, staff: str, text: str) -> Message:
        """A staff member's answer, stored as the agent's turn and marked as written by a person
        (``meta["author"] == "person"``, ``meta["staff"]``). Only the holder answers; an empty or
        oversized answer is refused with the reason, and nothing is stored."""
        text = self.check_message(text)
        with self._lock(conversation_id), self._store_failures(conversation_id):
            held = self.store.handover(conversation_id)
            if held is None or held.state != "taken" or held.staff != staff:
                holder = f"{held.staff} has it" if held and held.state == "taken" else "nobody has taken it"
                raise HandoverError(
                    f"{staff} does not hold conversation {conversation_id} ({holder})",
                    hint="take it first; a conversation has one person at a time",
                )
            meta = {"author": "person", "staff": staff, "model": self.folder.version}
            message = self.store.append_message(conversation_id, "assistant", text, meta=meta)
        event(
            log, "person_reply", conversation_id, message_id=message.id, staff=staff, content={"reply": text}
        )
        return message

    def message_for_a_person(self, conversation_id: str, text: str, *, client: str | None = None) -> Message:
        """Store a customer's message for the person asked into the conversation (waiting for one
        or taken), marked ``meta["to"] == "person"``, and do not answer it: for a channel that keeps
        the bot quiet while a person is on the way (Slack). Bad input and rate limits are refused
        as by :meth:`stream`; :class:`HandoverError` when nobody is asked in."""
        try:
            text = self.check_message(text)
            self._check_rates(conversation_id, client)
        except ChatbotError as error:
            self._count_error(error, conversation_id)
            raise
        with self._lock(conversation_id), self._store_failures(conversation_id):
            held = self.store.handover(conversation_id)
            if held is None or not held.open:
                raise HandoverError(
                    f"nobody is asked into conversation {conversation_id}",
                    hint="ask a person in with Engine.request_person, or let the bot answer (Engine.stream)",
                )
            return self.store.append_message(conversation_id, "user", text, meta={"to": "person"})

    def hand_back(self, conversation_id: str, staff: str, *, close: bool = False) -> Handover:
        """Give the conversation back to the bot, which answers the next message again; with
        ``close`` the person marks it resolved (state ``closed``)."""
        with self._store_failures(conversation_id):
            handover = self.store.return_handover(conversation_id, staff, close=close)
        event(log, "handover", conversation_id, state=handover.state, staff=staff)
        return handover

    def correct(self, message_id: int, staff: str, text: str) -> Correction:
        """Store the reply ``staff`` says the bot should have given instead of reply ``message_id``
        (the original is kept). ``chatbot feedback export`` trains on the latest correction in
        its place. An empty or oversized correction is refused with the reason."""
        text = self.check_message(text)
        with self._store_failures(None):
            correction = self.store.add_correction(message_id, staff, text)
        event(
            log,
            "correction",
            correction.conversation_id,
            message_id=message_id,
            staff=staff,
            content={"correction": text},
        )
        return correction

    def corrections(self, conversation_id: str) -> dict[int, Correction]:
        """The latest correction of each corrected reply in the conversation, by message id."""
        with self._store_failures(conversation_id):
            return {item.message_id: item for item in self.store.corrections(conversation_id)}

    def review(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        model: str | None = None,
        limit: int = 200,
    ) -> tuple[Review, ...]:
        """Replies for the support team to look at, newest first: those whose latest rating is
        thumbs down (rated in [since, until)) and the conversations a person was asked into
        (asked in [since, until)), each with the model version that answered and its latest
        correction; ``model`` keeps one version's."""
        with self._store_failures(None):
            items = [self._disliked_review(r, m) for r, m in self.store.disliked(since=since, until=until)]
            for handover in self.store.handovers(HANDOVER_STATES):
                asked = handover.requested_at
                if (since is None or asked >= since) and (until is None or asked < until):
                    items.append(self._handover_review(handover))
        items = [item for item in items if model is None or item.model == model]
        items.sort(key=lambda item: item.at, reverse=True)
        return tuple(items[:limit])

    def _disliked_review(self, rating: Feedback, reply: Message) -> Review:
        correction = self._correction_of(reply)
        model = reply.meta.get("model")
        return Review("disliked", reply.conversation_id, rating.created_at, reply, model, None, correction)

    def _handover_review(self, handover: Handover) -> Review:
        """The bot's last reply before a person was asked in (the flagged one, when flagged)."""
        transcript = self.store.transcript(handover.conversation_id)
        replies = [
            m
            for m in transcript
            if m.role == "assistant"
            and m.meta.get("author") != "person"
            and m.created_at <= handover.requested_at
        ]
        reply = replies[-1] if replies else None
        correction = self._correction_of(reply) if reply is not None else None
        model = reply.meta.get("model") if reply is not None else None
        return Review(
            "handed over", handover.conversation_id, handover.requested_at, reply, model, handover, correction
        )

    def _correction_of(self, reply: Message) -> Correction | None:
        latest = [c for c in self.store.corrections(reply.conversation_id) if c.message_id == reply.id]
        return latest[-1] if latest else None

    @contextlib.contextmanager
    def _store_failures(self, conversation_id: str | None) -> Iterator[None]:
        """A store that fails is counted (``chatbot_errors_total{kind="StoreError"}``) and logged
        here, whichever channel asked; the error goes on to the caller, who tells the customer."""
        try:
            yield
        except StoreError as error:
            self._count_error(error, conversation_id)
            raise

    @contextlib.contextmanager
    def _in_progress(self) -> Iterator[None]:
        """Count a reply as in progress (the metrics gauge and :meth:`wait_idle`)."""
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds until no reply is being generated (a graceful shutdown
        lets the replies in flight finish); returns how many are still in progress."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)
            return self._in_flight

    def ready(self) -> list[str]:
        """Why the engine cannot serve now (an empty list when it can): the model is loaded once
        the engine exists, so this checks that the store answers."""
        try:
            self.store.conversation_ids(limit=1)
        except ChatbotError as error:
            return [f"the conversation store does not answer: {error}"]
        return []

    # -- replies -------------------------------------------------------------------------

    def check_message(self, text: object) -> str:
        """Return ``text`` if the engine accepts it as a user message; raise InvalidMessage otherwise."""
        if not isinstance(text, str):
            raise InvalidMessage(f"a message is text, not {type(text).__name__}")
        if not text.strip():
            raise InvalidMessage("the message is empty", hint="type a question or a request")
        limit = self.config.max_message_chars
        if len(text) > limit:
            raise InvalidMessage(
                f"the message is {len(text)} characters long; the limit is {limit}",
                hint="shorten it or send it in several parts",
            )
        for position, char in enumerate(text):
            if unicodedata.category(char) in ("Cc", "Cs") and char not in ALLOWED_CONTROL:
                raise InvalidMessage(
                    f"the message contains a control character (U+{ord(char):04X}) at position {position}",
                    hint="remove it; only line breaks and tabs are allowed",
                )
        for marker in self.folder.reserved_markers:
            if marker in text:
                raise InvalidMessage(
                    f"the message contains {marker!r}, which this model reserves for its own use",
                    hint="remove it",
                )
        return text

    def reply(
        self,
        conversation_id: str,
        text: str,
        *,
        generation: GenerationConfig | None = None,
        client: str | None = None,
    ) -> Reply:
        """Answer ``text`` in the conversation and return the whole reply."""
        stream = self.stream(conversation_id, text, generation=generation, client=client)
        for _ in stream:
            pass
        assert stream.reply is not None
        return stream.reply

    def stream(
        self,
        conversation_id: str,
        text: str,
        *,
        generation: GenerationConfig | None = None,
        client: str | None = None,
    ) -> ReplyStream:
        """Answer ``text`` as a stream of text deltas; bad input, unknown ids and a message over a
        rate limit raise at once (:class:`RateLimited`; ``client`` names the sender for its limit).
        When every reply slot stays busy for the queue timeout, iterating raises :class:`Busy`;
        either way nothing is stored."""
        try:
            text = self.check_message(text)
            self._check_rates(conversation_id, client)
            settings = generation or self.config.generation
            seen = self.store.get_conversation(conversation_id)  # UnknownConversation now, not mid-stream
            self._to_a_person(conversation_id, text)
            prompt = self._prompt(seen, text, settings)  # MessageTooLong now, store unchanged
        except ChatbotError as error:
            self._count_error(error, conversation_id)
            raise
        return ReplyStream(lambda stream: self._answer(stream, seen, prompt, text, settings))

    def _check_rates(self, conversation_id: str, client: str | None) -> None:
        """:class:`RateLimited` when the conversation or the client (a channel's name for the
        sender) is over its limit."""
        if self._conversation_rate is not None:
            self._conversation_rate.check(conversation_id)
        if client is not None and self._client_rate is not None:
            self._client_rate.check(client)

    def _to_a_person(self, conversation_id: str, text: str) -> None:
        """When a staff member has the conversation, store the customer's message for them and
        raise :class:`WithAPerson`: the bot does not answer."""
        held = self.store.handover(conversation_id)
        if held is None or held.state != "taken":
            return
        with self._lock(conversation_id):
            self.store.append_message(conversation_id, "user", text, meta={"to": "person"})
        raise WithAPerson(
            "a person from the support team has this conversation and answers here",
            hint=f"{held.staff} answers with Engine.person_reply, or hands it back to the bot",
        )

    def _count_error(self, error: BaseException, conversation_id: str | None) -> None:
        kind = type(error).__name__ if isinstance(error, ChatbotError) else "generation"
        self.metrics.errors.labels(kind).inc()
        failed = not isinstance(error, (InvalidMessage, LookupError, RateLimited, Busy, WithAPerson))
        event(
            log,
            "failed" if failed else "refused",
            conversation_id,
            level=logging.ERROR if failed else logging.INFO,
            kind=kind,
            reason=str(error),
        )

    def _answer(
        self,
        stream: ReplyStream,
        seen: Conversation,
        prompt: Prompt,
        text: str,
        generation: GenerationConfig,
    ) -> Iterator[str]:
        started = time.perf_counter()
        conversation_id = seen.id
        with contextlib.ExitStack() as held:
            if self._slots is not None:
                try:
                    held.enter_context(self._slots.hold())  # waits in line; Busy before anything is stored
                except ChatbotError as error:
                    self._count_error(error, conversation_id)
                    raise
            held.enter_context(self._in_progress())
            held.enter_context(self._lock(conversation_id))
            current = self.store.get_conversation(conversation_id)
            if current.messages != seen.messages:  # another turn landed while this one waited
                prompt = self._prompt(current, text, generation)
            self.store.append_message(conversation_id, "user", text)  # acknowledged before generating
            if asks_for_a_person(text):  # the bot still answers until a person takes it
                self.store.request_handover(conversation_id, "asked")
            similarity = self.scope.similarity(text) if self.scope is not None else None
            tokens = _Tokens(started)
            pieces: list[str] = []  # what was streamed: the stored text is exactly their sum
            finish: FinishReason = "error"
            try:
                for delta in self._deltas(conversation_id, prompt, generation, tokens):
                    pieces.append(delta)
                    yield delta
                finish = "stop" if tokens and tokens[-1].id in self.generator.stop_token_ids else "length"
            except GeneratorExit:
                finish = "cancelled"  # the reader stopped early: keep what was written
                raise
            except Exception as error:
                self._count_error(error, conversation_id)
                raise
            finally:
                reply_text = "".join(pieces)
                stream.reply = self._record(
                    conversation_id, prompt, reply_text, tokens, finish, started, similarity
                )
                self._observe(stream.reply, text, tokens)

    def _observe(self, reply: Reply, text: str, tokens: _Tokens) -> None:
        """The reply's metrics and its log line."""
        metrics = self.metrics
        metrics.replies.labels(reply.finish_reason).inc()
        metrics.reply_seconds.observe(reply.latency_s)
        metrics.reply_tokens.inc(len(tokens))
        first = tokens.first_token_s
        if first is not None:
            metrics.first_token_seconds.observe(first)
            if len(tokens) > 1 and reply.latency_s > first:
                metrics.tokens_per_second.observe((len(tokens) - 1) / (reply.latency_s - first))
        if reply.handover:
            metrics.handovers.inc()
        event(
            log,
            "reply",
            reply.conversation_id,
            message_id=reply.message_id,
            finish_reason=reply.finish_reason,
            prompt_tokens=reply.prompt_tokens,
            reply_tokens=reply.reply_tokens,
            first_token_s=first,
            latency_s=reply.latency_s,
            confidence=reply.confidence,
            similarity=reply.similarity,
            handover=reply.handover,
            handover_reason=reply.handover_reason,
            content={"message": text, "reply": reply.text},
        )

    def _deltas(
        self, conversation_id: str, prompt: Prompt, generation: GenerationConfig, tokens: _Tokens
    ) -> Iterator[str]:
        """Text deltas of the reply, never splitting a character, stripped at both ends."""
        decoder = IncrementalDecoder(self.folder.tokenizer)
        trim = _Trim()
        ids, shared = prompt.token_ids, prompt.system_tokens
        for token in self.generator.generate(ids, generation, key=conversation_id, shared=shared):
            tokens.add(token)
            if token.id in self.generator.stop_token_ids:
                break
            if delta := trim.push(decoder.push(token.id)):
                yield delta
        if delta := trim.push(decoder.flush()):
            yield delta

    def _prompt(self, conversation: Conversation, text: str, generation: GenerationConfig) -> Prompt:
        pending = Message(-1, conversation.id, -1, "user", text, conversation.created_at)
        return build_prompt(
            self.folder,
            (*conversation.messages, pending),
            system_prompt=conversation.system_prompt,
            max_new_tokens=generation.max_new_tokens,
        )

    def _record(
        self,
        conversation_id: str,
        prompt: Prompt,
        text: str,
        tokens: list[Token],
        finish: FinishReason,
        started: float,
        similarity: float | None,
    ) -> Reply:
        """Store the assistant turn and return its reply record."""
        confidence = sum(t.logprob for t in tokens) / len(tokens) if tokens else float("-inf")
        reason = self._handover_reason(text, confidence, similarity)
        handover = reason is not None
        meta: dict[str, Any] = {
            "confidence": confidence,
            "similarity": similarity,
            "handover": handover,
            "handover_reason": reason,
            "prompt_tokens": len(prompt.token_ids),
            "reply_tokens": len(tokens),
            "finish_reason": finish,
            "dropped_turns": prompt.dropped_turns,
            "model": self.folder.version,
        }
        meta["latency_s"] = time.perf_counter() - started
        message = self.store.append_message(conversation_id, "assistant", text, meta=meta)
        if reason is not None:
            self.store.request_handover(conversation_id, reason)
        fields = {k: v for k, v in meta.items() if k != "model"}
        return Reply(text=text, conversation_id=conversation_id, message_id=message.id, **fields)

    def _handover_reason(self, text: str, confidence: float, similarity: float | None) -> str | None:
        """Which signals say a person should take over ("flagged", "out-of-scope", both), or None."""
        unsure, unlike = self.config.handover_below, self.config.handover_unlike_below
        fired = []
        if not text or (unsure is not None and confidence < unsure):
            fired.append("flagged")
        if similarity is not None and unlike is not None and similarity < unlike:
            fired.append("out-of-scope")
        return ", ".join(fired) or None

    def _lock(self, conversation_id: str) -> _HeldLock:
        with self._locks_guard:
            holder = self._locks.get(conversation_id)
            if holder is None:
                holder = self._locks[conversation_id] = _ConversationLock()
        return _HeldLock(holder)

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# "Can I talk to a human?", "speak with a real person please", "connect me to an agent"
_WANTS_A_PERSON = re.compile(
    r"\b(?:talk|speak|chat)\s+(?:to|with)\s+(?:a|an|some|your|a\s+real|an\s+actual)?\s*"
    r"(?:human|person|agent|someone|somebody|representative|operator)\b"
    r"|\bconnect\s+me\s+(?:to|with)\b"
    r"|\b(?:human|real\s+person|live\s+agent)\s*,?\s*please\b",
    re.IGNORECASE,
)


def asks_for_a_person(text: str) -> bool:
    """Whether a customer's message asks for a person (English phrasings only, for now)."""
    return _WANTS_A_PERSON.search(text) is not None


class _Tokens(list[Token]):
    """The tokens of a reply, and when the first came (seconds after the message arrived)."""

    def __init__(self, started: float) -> None:
        super().__init__()
        self.started = started
        self.first_token_s: float | None = None

    def add(self, token: Token) -> None:
        if not self:
            self.first_token_s = time.perf_counter() - self.started
        self.append(token)


class _Trim:
    """Drops leading whitespace and holds trailing whitespace back, so that the streamed deltas add
    up to exactly the stored (stripped) reply text."""

    def __init__(self) -> None:
        self._started = False
        self._held = ""

    def push(self, delta: str) -> str:
        if not self._started:
            delta = delta.lstrip()
            self._started = bool(delta)
        body = (self._held + delta).rstrip()
        self._held = (self._held + delta)[len(body) :]
        return body


class _HeldLock:
    """Context manager on a conversation lock; its strong reference keeps the lock alive in use."""

    __slots__ = ("holder",)

    def __init__(self, holder: _ConversationLock) -> None:
        self.holder = holder

    def __enter__(self) -> None:
        self.holder.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.holder.lock.release()
