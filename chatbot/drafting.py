"""Drafting tokens from the conversation itself (prompt lookup decoding).

Support replies repeat what the conversation already holds: order numbers, product names, the
customer's own words, and what the bot wrote in other replies. :func:`draft` looks for the
latest earlier place where the last few tokens of the conversation (prompt and reply so far)
occurred, in the conversation first, then in the bot's recent replies (:class:`RecentReplies`),
and proposes the tokens that followed them there. The scheduler feeds them to one step after
the reply's last token and keeps as many as greedy decoding would have written
(``chatbot.scheduler``): a wrong draft costs a slightly wider step, never a different reply.

>>> draft([5, 6, 7, 8, 9, 5, 6], tokens=3)  # matched [5, 6]: up to 4 tokens
[7, 8, 9]
"""

from __future__ import annotations

import numpy as np

LONGEST_MATCH = 3  # n-gram lengths tried, longest first, down to one token
RECENT_TOKENS = 4096  # the bot's recent replies kept to draft from


class RecentReplies:
    """The last :data:`RECENT_TOKENS` tokens of the bot's finished replies, one array.

    Support replies are formulaic: the demo model's held-out replies rarely repeat their own
    conversation, but a reply's next words have usually been written before, in another reply.
    Drafts looked up there are only proposals: the step keeps just the tokens greedy decoding
    writes anyway, so no conversation's reply changes (README, "Speed").
    """

    def __init__(self, limit: int = RECENT_TOKENS) -> None:
        self.limit = limit
        self.tokens = np.zeros(0, dtype=np.int64)

    def add(self, reply: list[int]) -> None:
        if self.limit and reply:
            self.tokens = np.concatenate([self.tokens, np.asarray(reply, dtype=np.int64)])[-self.limit :]


def draft(history: list[int] | np.ndarray, *, tokens: int, longest: int = LONGEST_MATCH) -> list[int]:
    """The tokens that followed the latest earlier occurrence of the longest suffix of
    ``history`` (``longest`` tokens down to one) found before; ``[]`` when none occurs.

    A longer match earns a longer draft: twice the match's length, at most ``tokens`` (on the
    demo model's held-out replies a one-token match is right far less often than a three-token one).
    """
    ids = np.asarray(history, dtype=np.int64)
    end = len(ids)
    if tokens < 1 or end < 2:
        return []
    # positions j (before the last) whose token is the last one: where a match may end
    ends = np.flatnonzero(ids[:-1] == ids[-1])
    matched = 1
    while len(ends) and matched < min(longest, end - 1):  # grow the match one token to the left
        longer = ends[ends >= matched]
        longer = longer[ids[longer - matched] == ids[end - 1 - matched]]
        if not len(longer):
            break
        ends, matched = longer, matched + 1
    if not len(ends):
        return []
    start = int(ends[-1]) + 1  # the latest occurrence: what followed it
    return [int(token) for token in ids[start : start + min(tokens, 2 * matched)]]
