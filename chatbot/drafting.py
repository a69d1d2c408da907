"""Drafting the next tokens of a greedy reply, for the scheduler to verify in one step.

Support replies are formulaic: most of what the bot writes, it was trained on. Two sources:

* :class:`DraftTable`, the model's own replies: what most often followed each 1-4-token context
  in the agent turns it was trained on (``drafts.npz``, written by ``chatbot train``). A draft
  walks it: the longest context the reply ends with, its most frequent next token, then the
  context that makes, and so on. On the demo model's held-out conversations a drafting step
  keeps 4.4 tokens with it, against 2.0 from the sources below alone (README, "Speculative
  decoding").
* :func:`draft`, prompt lookup: the latest earlier place where the last few tokens of the
  conversation (prompt and reply so far) occurred, in the conversation first, then in the bot's
  recent replies (:class:`RecentReplies`), and the tokens that followed them there; for folders
  without a table, and where the table has no context the reply ends with.

The scheduler feeds a draft to one step after the reply's last token and keeps as many as greedy
decoding would have written (``chatbot.scheduler``): a wrong draft costs a slightly wider step,
not another reply.

>>> draft([5, 6, 7, 8, 9, 5, 6], tokens=3)  # matched [5, 6]: up to 4 tokens
[7, 8, 9]
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from chatbot.errors import ModelFolderError

LONGEST_MATCH = 3  # n-gram lengths tried, longest first, down to one token
RECENT_TOKENS = 4096  # the bot's recent replies kept to draft from
DRAFTS_FILE = "drafts.npz"  # a model folder's DraftTable (written by `chatbot train`)
TABLE_ORDER = 4  # the longest context a DraftTable keys on, in tokens (4: 5 % faster than 3 on the demo)
MAX_ORDER = 8  # the longest a table file may say it keys on
MAX_ROWS = 2_000_000  # a table keeps at most this many contexts (~40 MB), the most frequent
BACK_OFF = 4  # after n drafts in a row that missed, 2**min(n, BACK_OFF) - 1 plain steps before the next
MIN_SHARE = 0.5  # a table's draft goes on while its next token followed its context at least this often
# a step verifying the drafts of several replies feeds at most this many positions (see batch_draft_tokens)
DRAFT_POSITIONS = 64
_MIX = 0x9E3779B97F4A7C15  # the contexts' 64-bit hash (numpy and Python compute it alike)
_BITS = (1 << 64) - 1


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


def propose(
    history: np.ndarray,
    *,
    tokens: int,
    table: DraftTable | None = None,
    recent: RecentReplies | None = None,
    min_share: float = MIN_SHARE,
) -> list[int]:
    """The scheduler's draft after ``history``: from ``table`` (the model's training replies) when
    it has a context the history ends with, else looked up in the bot's ``recent`` replies and
    the history itself (:func:`draft`); at most ``tokens``."""
    if table is not None and (drafted := table.draft(history, tokens=tokens, min_share=min_share)):
        return drafted
    return draft(history if recent is None else np.concatenate([recent.tokens, history]), tokens=tokens)


def back_off(misses: int) -> int:
    """Plain steps before the next draft after ``misses`` drafts in a row of which nothing was
    kept: 0, 1, 3, 7, then 15 (a wrong draft's wider step costs time; a reply unlike the drafts'
    sources soon stops paying for them)."""
    return (1 << min(misses, BACK_OFF)) - 1


def batch_draft_tokens(rows: int, tokens: int, positions: int = DRAFT_POSITIONS) -> int:
    """The most tokens each of ``rows`` replies drafting in one step may draft (``tokens`` alone),
    so that the step feeds at most ``positions`` positions (each row its last token and its
    draft, right-padded to the longest); 0: the step decodes plainly.

    A step is cheap while it reads the weights once for few positions, then costs about in
    proportion to them: on GPT-2 124M's shape (``cpu-int8``, AMD EPYC with VNNI) 32 rows of 1, 3,
    5 and 9 positions took 25, 44, 59 and 91 ms. Replaying the demo model's held-out drafts in
    batches over those step times (``python -m training.evaluation.draft_policy DEMO HELD_OUT
    --rows 8,16,24,32 --positions 48,64,80,96,1000 --costs-from GPT2_BENCH_FOLDER``), drafting
    together without a limit was estimated at 1.34×, 1.00×, 0.89× and 0.87× plain decoding's
    speed for 8, 16, 24 and 32 replies; within 64 positions at 1.36×, 1.37×, 1.36× and 1.43×
    (README, "Speculative decoding")."""
    if rows <= 1:
        return tokens
    return max(0, min(tokens, positions // rows - 1))


class DraftTable:
    """What most often followed each context of 1 to :data:`TABLE_ORDER` tokens in a model's
    training replies, and where a draft goes on from there.

    One row per distinct context, sorted by its 64-bit hash (``keys``): the most frequent next
    token (``nexts``), the share of the context's occurrences it followed (``shares``), and the
    row of the longest context the draft ends with after taking it (``follow``, -1: none), so
    a draft of k tokens is one lookup and k steps along ``follow``. A hash collision can only
    make a draft wrong, which the step that verifies it throws away.

    >>> table = DraftTable.build([7, 1, 2, 3, 9, 7, 1, 2, 3, 9])
    >>> table.draft([5, 7, 1], tokens=3)
    [2, 3, 9]
    """

    def __init__(
        self,
        keys: np.ndarray,
        nexts: np.ndarray,
        shares: np.ndarray,
        follow: np.ndarray,
        order: int = TABLE_ORDER,
    ) -> None:
        self.keys, self.nexts, self.shares, self.follow = keys, nexts, shares, follow
        self.order = order  # the longest context it keys on

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def build(
        cls, tokens: Sequence[int] | np.ndarray, *, order: int = TABLE_ORDER, max_rows: int = MAX_ROWS
    ) -> DraftTable:
        """The table of ``tokens`` (replies one after another, each ending with its stop token):
        at most ``max_rows`` contexts, the most frequent (a draft from a context seen once is a
        guess; the file stays ~20 bytes a row)."""
        ids = np.asarray(tokens, dtype=np.int64)
        contexts, nexts = [], []
        for n in range(1, order + 1):  # every context of n tokens that something followed
            ends = np.arange(n - 1, len(ids) - 1)
            context = np.full((len(ends), order), -1, dtype=np.int64)  # right-aligned, -1 before
            for j in range(n):
                context[:, order - n + j] = ids[ends - n + 1 + j]
            contexts.append(context)
            nexts.append(ids[ends + 1])
        context, following = np.concatenate(contexts), np.concatenate(nexts)
        key = _hash_rows(context)
        # count each (context, next) pair; keep each context's most frequent next (the lowest on ties)
        pairs = np.lexsort((following, key))
        key, following, context = key[pairs], following[pairs], context[pairs]
        starts = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]) | (following[1:] != following[:-1])])
        counts = np.diff(np.r_[starts, len(key)])
        key, following, context = key[starts], following[starts], context[starts]
        best = np.lexsort((-counts, key))
        key, following, context, counts = key[best], following[best], context[best], counts[best]
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        totals = np.add.reduceat(counts, first)
        shares = counts[first] / totals
        key, following, context = key[first], following[first], context[first]
        if len(key) > max_rows:  # the contexts seen most often, still sorted by key
            kept = np.sort(np.argpartition(-totals, max_rows - 1)[:max_rows])
            key, following, context, shares = key[kept], following[kept], context[kept], shares[kept]
        # after a row's next token, the draft ends with (its context + that token): its longest row
        after = np.concatenate([context[:, 1:], following[:, None]], axis=1)
        lengths = (context >= 0).sum(axis=1) + 1
        follow = np.full(len(key), -1, dtype=np.int64)
        for n in range(order, 0, -1):
            todo = np.flatnonzero((follow < 0) & (lengths >= n))
            tail = np.full((len(todo), order), -1, dtype=np.int64)
            tail[:, order - n :] = after[todo, order - n :]
            follow[todo] = _rows_of(key, _hash_rows(tail))
        return cls(key, following.astype(np.int32), shares.astype(np.float32), follow.astype(np.int32), order)

    def draft(
        self, history: Sequence[int] | np.ndarray, *, tokens: int, min_share: float = MIN_SHARE
    ) -> list[int]:
        """Up to ``tokens`` tokens to follow ``history``: from the row of the longest context it
        ends with, while each next token followed its context at least ``min_share`` of the time."""
        order = self.order
        tail = [int(token) for token in history[-order:]]
        hashes = [_hash_python(tail[len(tail) - n :]) for n in range(len(tail), 0, -1)]
        found = _rows_of(self.keys, np.array(hashes, dtype=np.uint64))
        hits = found[found >= 0]
        drafted: list[int] = []
        row = int(hits[0]) if len(hits) else -1
        while row >= 0 and len(drafted) < tokens and self.shares[row] >= min_share:
            drafted.append(int(self.nexts[row]))
            row = int(self.follow[row])
        return drafted

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``drafts.npz`` into ``folder``; its path."""
        path = Path(folder) / DRAFTS_FILE
        np.savez(
            path, keys=self.keys, nexts=self.nexts, shares=self.shares, follow=self.follow, order=self.order
        )
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> DraftTable | None:
        """The table of a model folder, ``None`` when it has none (drafts then come from the
        conversation and the bot's recent replies); :class:`ModelFolderError` naming the file when
        it is broken."""
        path = Path(folder) / DRAFTS_FILE
        if not path.exists():
            return None
        hint = f"train the model again with `chatbot train` (it writes {DRAFTS_FILE}), or delete {path}"
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in ("keys", "nexts", "shares", "follow")}
                # a table written before its order was recorded keyed on 3 tokens
                order = int(data["order"]) if "order" in data.files else 3
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise ModelFolderError(f"{path} is not a draft table: {error}", hint=hint) from error
        rows = len(arrays["keys"])
        kinds = {"keys": np.uint64, "nexts": np.int32, "shares": np.float32, "follow": np.int32}
        for name, kind in kinds.items():
            array = arrays[name]
            if array.dtype != kind or array.shape != (rows,):
                raise ModelFolderError(f"{path}: {name} is not {rows} values of {np.dtype(kind)}", hint=hint)
        if rows and (int(arrays["follow"].max()) >= rows or int(arrays["follow"].min()) < -1):
            raise ModelFolderError(f"{path}: a row follows one that is not in the table", hint=hint)
        if not 1 <= order <= MAX_ORDER:
            raise ModelFolderError(f"{path}: contexts of {order} tokens are not a draft table's", hint=hint)
        return cls(**arrays, order=order)


def _hash_rows(contexts: np.ndarray) -> np.ndarray:
    """The hash of each right-aligned context (-1 before its first token), as :func:`_hash_python`."""
    lengths = (contexts >= 0).sum(axis=1)
    hashes = lengths.astype(np.uint64)
    for column in range(contexts.shape[1]):
        used = contexts[:, column] >= 0
        mixed = (hashes * np.uint64(_MIX)) ^ contexts[:, column].astype(np.uint64)
        mixed ^= mixed >> np.uint64(29)
        hashes = np.where(used, mixed, hashes)
    return hashes


def _hash_python(context: list[int]) -> int:
    hashed = len(context)
    for token in context:
        hashed = ((hashed * _MIX) & _BITS) ^ token
        hashed ^= hashed >> 29
    return hashed


def _rows_of(keys: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """The row of each hash in the sorted ``keys``, -1 where it is not there."""
    if not len(keys):
        return np.full(len(hashes), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(keys, hashes), len(keys) - 1)
    return np.where(keys[at] == hashes, at, -1)
