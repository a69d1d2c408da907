"""The engine's exception tree.

Every error a user can cause is a :class:`ChatbotError` whose message says what went wrong
and what to do next. Library code raises; only the command line turns errors into exit codes.
"""

from __future__ import annotations


class ChatbotError(Exception):
    """Base class of every error the engine raises on purpose.

    ``hint`` is the next step for the person reading the message (a command to run, a setting
    to change); it is appended to ``str(error)``.
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, hint={self.hint!r})"


class InvalidMessage(ChatbotError, ValueError):
    """A user message the engine will not accept (empty, too long, control characters...)."""


class MessageTooLong(InvalidMessage):
    """A single message that cannot fit the model's context window even with no history."""


class UnknownConversation(ChatbotError, LookupError):
    """A conversation id that the store does not know."""


class UnknownMessage(ChatbotError, LookupError):
    """A message id that the store does not know (for example when recording feedback)."""


class ModelFolderError(ChatbotError):
    """A model folder that is missing, incomplete or broken."""


class StoreError(ChatbotError):
    """The conversation store cannot be opened or used (for example a schema from a newer version)."""


class ChannelError(ChatbotError):
    """A channel plugin that is unknown or cannot be loaded."""


class HandoverError(ChatbotError):
    """A handover step that does not fit the conversation's state: taking one nobody asked a
    person into, one another staff member holds, answering one you do not hold."""


class WithAPerson(ChatbotError):
    """A message to a conversation a staff member has taken: it is stored, and the bot does not
    answer it; the person does (:meth:`chatbot.engine.Engine.person_reply`)."""


class ExportError(ChatbotError):
    """An ONNX export that failed, or whose parity check against PyTorch failed."""


class RateLimited(ChatbotError):
    """A message over a rate limit (of its conversation or of its sender); nothing was stored."""

    def __init__(self, message: str, *, hint: str | None = None, retry_after_s: float = 0.0) -> None:
        super().__init__(message, hint=hint)
        self.retry_after_s = retry_after_s


class Busy(ChatbotError):
    """Every reply slot stayed taken for the queue's whole timeout; nothing was stored."""


OUTAGE_MESSAGE = "the assistant cannot take messages right now; please try again in a minute"


def customer_message(error: ChatbotError) -> str:
    """What a channel may show the customer for ``error``: the error itself when the customer can
    act on it (too long, too fast, ...), a plain apology when the service failed (the store's
    error names its database: that is for the operator's log, never for a customer)."""
    return OUTAGE_MESSAGE if isinstance(error, StoreError) else str(error)
