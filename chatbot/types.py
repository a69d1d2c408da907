"""The records the engine hands out: messages, conversations, replies, generation settings.

All records are frozen: the engine hands out copies, never live state, so a channel can keep
or share them freely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

# A callback that says what long work is doing, one line at a time (training, export, bench)
Progress = Callable[[str], None]

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")
FinishReason = Literal["stop", "length", "cancelled", "error"]


@dataclass(frozen=True)
class Message:
    """One turn of a conversation as stored.

    ``id`` is unique in the store (use it to record feedback); ``seq`` orders the turns of one
    conversation. ``meta`` holds what the engine measured for an assistant turn (confidence,
    token counts, latency) and is empty for user turns.
    """

    id: int
    conversation_id: str
    seq: int
    role: Role
    content: str
    created_at: datetime
    meta: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0  # which stretch between resets the turn belongs to (see Store.reset)


@dataclass(frozen=True)
class Conversation:
    """A conversation and its current history (the turns since the last reset), oldest first."""

    id: str
    created_at: datetime
    system_prompt: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    messages: tuple[Message, ...] = ()


@dataclass(frozen=True)
class Reply:
    """What the engine answered, and what a support team needs to trust it.

    ``confidence`` is the mean log-probability (natural log, <= 0) the model gave the tokens it
    wrote, end-of-turn token included. ``similarity`` is how like the training data the customer's
    message was: the cosine similarity (0 to 1) to the nearest customer turn the model was trained
    on (``None`` when the model folder has no scope index). ``handover`` is true when either fell
    under the engine's threshold (or the reply is empty), meaning a person should take over;
    ``handover_reason`` says which: "flagged" (low confidence or an empty reply), "out-of-scope"
    (low similarity), or both joined by ", ".
    """

    text: str
    conversation_id: str
    message_id: int
    confidence: float
    handover: bool
    prompt_tokens: int
    reply_tokens: int
    latency_s: float
    finish_reason: FinishReason = "stop"
    dropped_turns: int = 0
    similarity: float | None = None
    handover_reason: str | None = None


@dataclass(frozen=True)
class Feedback:
    """A rating of one assistant reply: +1 (thumbs up) or -1 (thumbs down), with an optional comment."""

    id: int
    message_id: int
    conversation_id: str
    rating: int
    comment: str | None
    created_at: datetime


HandoverState = Literal["waiting", "taken", "returned", "closed"]
OPEN_HANDOVERS: tuple[HandoverState, ...] = ("waiting", "taken")
HANDOVER_STATES: tuple[HandoverState, ...] = ("waiting", "taken", "returned", "closed")


@dataclass(frozen=True)
class Handover:
    """A conversation a person was asked into: ``waiting`` for one, ``taken`` by ``staff``,
    ``returned`` to the bot, or ``closed`` by ``staff`` (resolved; the bot answers what comes
    next). ``reason`` says who asked: "flagged" (the engine was unsure), "out-of-scope" (the
    message was unlike the training data; "flagged, out-of-scope" for both), "asked" (the
    customer), or what a channel or staff member wrote."""

    conversation_id: str
    state: HandoverState
    reason: str
    staff: str | None
    requested_at: datetime
    updated_at: datetime

    @property
    def open(self) -> bool:
        """Whether a person is asked in or has the conversation (not yet handed back)."""
        return self.state in OPEN_HANDOVERS


@dataclass(frozen=True)
class Correction:
    """The reply a staff member says the bot should have given instead of ``message_id``'s.

    Stored beside the original (which is kept); the latest correction of a reply is the one a
    feedback export trains on."""

    id: int
    message_id: int
    conversation_id: str
    content: str
    staff: str
    created_at: datetime


@dataclass(frozen=True)
class Review:
    """A reply for the support team to look at: ``why`` is "disliked" (its latest rating is thumbs
    down) or "handed over" (a person was asked into its conversation; the reply is the bot's last
    before that, if any). ``model`` is the model version that wrote it."""

    why: Literal["disliked", "handed over"]
    conversation_id: str
    at: datetime  # when it was rated, or when the person was asked in
    reply: Message | None
    model: str | None
    handover: Handover | None = None
    correction: Correction | None = None


@dataclass(frozen=True)
class GenerationConfig:
    """How to pick the reply's tokens.

    Greedy when ``temperature`` is 0 (the default); otherwise sampling with the filters below.
    """

    max_new_tokens: int = 128  # reply budget; the prompt is cut so prompt + budget fits the window
    temperature: float = 0.0  # 0 = greedy; > 0 divides the logits before sampling
    top_k: int = 0  # keep only the k most likely tokens (0 = off)
    top_p: float = 1.0  # keep the smallest set whose probability reaches p (1.0 = off)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in prompt or reply (CTRL style)
    seed: int | None = None  # fixes sampling; None draws from the OS

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
