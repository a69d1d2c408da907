"""Building the prompt: system prompt + as much recent history as fits + the new message.

The prompt plus the reply budget must fit the model's context window. When it does not, the
oldest whole turns are dropped first (a turn is a customer message and the replies that follow
it); the system prompt and the new message are always kept. A new message that cannot fit even
alone is refused with :class:`MessageTooLong`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from chatbot.errors import ChatbotError, MessageTooLong
from chatbot.folder import ModelFolder
from chatbot.types import Message


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt ready for generation."""

    text: str
    token_ids: tuple[int, ...]
    dropped_turns: int  # whole turns of history left out to fit the window
    # the leading tokens that are the system prompt's turn, the same in every conversation with
    # this system prompt (0 without one, or when the template does not write it first, alone)
    system_tokens: int = 0


def turn_starts(history: Sequence[Message]) -> list[int]:
    """Indexes where a turn starts: every user message (and 0, whatever its role)."""
    return [i for i, m in enumerate(history) if i == 0 or m.role == "user"]


def build_prompt(
    folder: ModelFolder,
    history: Sequence[Message],
    *,
    system_prompt: str | None,
    max_new_tokens: int,
) -> Prompt:
    """Render ``history`` (ending with the new user message) so that it fits with the reply budget.

    Rendering is monotonic in the number of dropped turns, so a binary search finds the most
    history that fits with O(log turns) renders.
    """
    window = folder.spec.n_positions - max_new_tokens
    if window < 1:
        raise ChatbotError(
            f"a reply budget of {max_new_tokens} tokens leaves no room for a prompt in the model's "
            f"{folder.spec.n_positions}-token window",
            hint="lower max_new_tokens",
        )
    starts = turn_starts(history)
    last = len(starts) - 1  # dropping every turn but the last keeps only the new message

    def render(dropped: int) -> Prompt:
        kept = history[starts[dropped] :]
        system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
        turns = [{"role": m.role, "content": m.content} for m in kept]
        text = folder.template.render(system + turns, add_generation_prompt=True)
        return Prompt(text, tuple(folder.encode(text)), dropped)

    smallest = render(last)
    if len(smallest.token_ids) > window:
        raise _too_long(folder, smallest, window, system_prompt)
    low, high = 0, last  # invariant: dropping `high` turns fits
    while low < high:
        mid = (low + high) // 2
        if len(render(mid).token_ids) <= window:
            high = mid
        else:
            low = mid + 1
    prompt = smallest if high == last else render(high)
    return replace(prompt, system_tokens=_system_tokens(folder, system_prompt, prompt.token_ids))


def _system_tokens(folder: ModelFolder, system_prompt: str | None, token_ids: Sequence[int]) -> int:
    """How many of ``token_ids`` are the system prompt's turn rendered alone (0 if they are not)."""
    if system_prompt is None:
        return 0
    system = [{"role": "system", "content": system_prompt}]
    head = folder.encode(folder.template.render(system, add_generation_prompt=False))
    return len(head) if len(head) < len(token_ids) and tuple(token_ids[: len(head)]) == tuple(head) else 0


def _too_long(folder: ModelFolder, alone: Prompt, window: int, system_prompt: str | None) -> MessageTooLong:
    overflow = len(alone.token_ids) - window
    where = " with the system prompt" if system_prompt else ""
    return MessageTooLong(
        f"your message is too long for this model: it needs {len(alone.token_ids)} tokens{where}, "
        f"{overflow} more than the {window} the model's window leaves after the reply budget",
        hint="shorten the message or split it into several",
    )
