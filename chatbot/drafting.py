"""Drafting tokens from the conversation itself (prompt lookup decoding).

Support replies repeat what the conversation already holds: order numbers, product names, the
customer's own words. :func:`draft` looks for the latest earlier place where the last few tokens
of the conversation (prompt and reply so far) occurred and proposes the tokens that followed
them there. The scheduler feeds them to one step after the reply's last token and keeps as many
as greedy decoding would have written (``chatbot.scheduler``): a wrong draft costs a slightly
wider step, never a different reply.

>>> draft([5, 6, 7, 8, 9, 5, 6], tokens=3)
[7, 8, 9]
"""

from __future__ import annotations

import numpy as np

LONGEST_MATCH = 3  # n-gram lengths tried, longest first, down to one token


def draft(history: list[int] | np.ndarray, *, tokens: int, longest: int = LONGEST_MATCH) -> list[int]:
    """Up to ``tokens`` tokens that followed the latest earlier occurrence of the longest suffix
    of ``history`` (``longest`` tokens down to one) found before; ``[]`` when none occurs."""
    ids = np.asarray(history, dtype=np.int64)
    end = len(ids)
    if tokens < 1 or end < 2:
        return []
    # positions j (before the last) whose token is the last one: candidate ends of a match
    ends = np.flatnonzero(ids[:-1] == ids[-1])
    best: np.ndarray | None = None
    for back in range(1, min(longest, end - 1)):  # grow the match one token to the left
        if len(ends) == 0:
            break
        best = ends
        ends = ends[ends >= back]
        ends = ends[ids[ends - back] == ids[end - 1 - back]]
    else:
        if len(ends):
            best = ends
    if best is None or len(best) == 0:
        return []
    start = int(best[-1]) + 1  # the latest occurrence: what followed it
    return [int(token) for token in ids[start : start + tokens]]
