"""How unlike the training data a customer's message is: the out-of-scope signal.

``chatbot train`` indexes the customer turns of the training conversations into the model folder
(``scope.npz``, with its header ``scope.json``); the engine loads the index with the folder and
gives every customer message a **similarity**: the cosine similarity (0 to 1) of the message to
its nearest neighbour among those turns. A message like nothing the bot was trained on ("What's
the weather like?" to a shop's bot) scores low, and the engine hands it to a person when the
score is under ``EngineConfig.handover_unlike_below``.

>>> index = ScopeIndex.build(["Where is my order?", "I want to return my shoes"])
>>> round(index.similarity("where is my order"), 2)
1.0
>>> index.similarity("What's the weather like?") < 0.3
True

The representation needs numpy alone: TF-IDF over hashed features of the message, L2-normalised.
The features are its words, its word pairs, and the character 3- to 5-grams of each word (padded
with a space at both ends), after lower-casing and writing every digit as ``0`` (an order number
is a slot, not a topic). Character n-grams keep a typo ("ordr") near its word; word pairs keep
"return label" apart from "label" alone. Each feature is hashed (CRC-32) into one of
``buckets`` columns; term weights are ``1 + ln(tf)`` times the smoothed idf
``ln((1 + n) / (1 + df)) + 1`` of the indexed turns. The index is stored column by column (for
each feature, the turns that hold it and its weight in each), so a message's similarity is a
sparse matrix-vector product over its few features' columns: well under a millisecond on the
demo model's index.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chatbot.errors import ModelFolderError

SCOPE_FILE = "scope.npz"  # the index: idf, and the (feature -> turns, weights) columns
SCOPE_HEADER = "scope.json"  # its format version, settings and counts
SCOPE_FORMAT = 1  # bump when the features or the file layout change; older files are refused

# A word: a run of letters or digits in any script; Chinese and Japanese, written without spaces,
# count one character per word.
CJK_RANGES = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD = re.compile(rf"[{CJK_RANGES}]|[^\W_{CJK_RANGES}]+")
DIGIT = re.compile(r"\d")


def words(text: str) -> list[str]:
    """Lower-cased words of any script; each Chinese or Japanese character is a word."""
    return WORD.findall(text.lower())


@dataclass(frozen=True)
class ScopeSettings:
    """What a message's features are; stored in ``scope.json`` and used again when serving."""

    buckets: int = 2**18  # hashed feature columns (262,144: few collisions among ~50k features)
    char_min: int = 3  # shortest character n-gram of a word (padded with a space at both ends)
    char_max: int = 5  # longest
    word_pairs: bool = True  # adjacent word pairs as features too


def features(text: str, settings: ScopeSettings = ScopeSettings()) -> Counter[int]:
    """The hashed features of ``text`` and how often each occurs."""
    tokens = [DIGIT.sub("0", word) for word in words(unicodedata.normalize("NFKC", text))]
    grams = [f"w {token}" for token in tokens]
    if settings.word_pairs:
        grams += [f"p {a} {b}" for a, b in itertools.pairwise(tokens)]
    for token in tokens:
        padded = f" {token} "
        for n in range(settings.char_min, settings.char_max + 1):
            grams += [f"c {padded[i : i + n]}" for i in range(len(padded) - n + 1)]
    return Counter(zlib.crc32(gram.encode("utf-8")) % settings.buckets for gram in grams)


class ScopeIndex:
    """The customer turns a model was trained on, as L2-normalised TF-IDF vectors.

    Build it with :meth:`build` (training), save it into a model folder with :meth:`save`; serving
    loads it with :func:`chatbot.folder.load_scope` (``None`` when the folder has none), which
    reads the header and hands it to :meth:`from_files`. :meth:`similarity`
    is the cosine similarity of a message to its nearest indexed turn: 0 (no feature in common)
    to 1 (the same features).
    """

    def __init__(
        self,
        *,
        idf: np.ndarray,  # (buckets,) float32
        column_starts: np.ndarray,  # (buckets + 1,) int64: column f is entries [starts[f], starts[f+1])
        turns: np.ndarray,  # (entries,) int32: the indexed turn of each entry
        weights: np.ndarray,  # (entries,) float32: the feature's weight in that turn
        size: int,  # indexed turns
        settings: ScopeSettings,
        header: dict[str, Any] | None = None,
    ) -> None:
        self.idf = idf
        self.column_starts = column_starts
        self.turns = turns
        self.weights = weights
        self.size = size
        self.settings = settings
        self.header = dict(header or {})

    def __len__(self) -> int:
        return self.size

    @classmethod
    def build(cls, texts: Iterable[str], settings: ScopeSettings = ScopeSettings()) -> ScopeIndex:
        """An index of ``texts`` (the customer turns; duplicates after lower-casing and collapsing
        spaces are indexed once). Texts without a single word are left out."""
        unique = {" ".join(text.casefold().split()): text for text in texts}
        counted = [counts for text in unique.values() if (counts := features(text, settings))]
        frequency = np.zeros(settings.buckets, dtype=np.int64)  # (buckets,) turns holding each feature
        for counts in counted:
            frequency[list(counts)] += 1
        n = len(counted)
        idf = (np.log((1 + n) / (1 + frequency)) + 1).astype(np.float32)  # (buckets,)
        columns, turns, weights = [], [], []
        for turn, counts in enumerate(counted):
            ids, values = _weighted(counts, idf)
            columns.append(ids)
            turns.append(np.full(len(ids), turn, dtype=np.int32))
            weights.append(values)
        column = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
        order = np.argsort(column, kind="stable")  # column by column, turns in order within each
        starts = np.zeros(settings.buckets + 1, dtype=np.int64)
        np.cumsum(np.bincount(column, minlength=settings.buckets), out=starts[1:])
        return cls(
            idf=idf,
            column_starts=starts,
            turns=(np.concatenate(turns) if turns else np.zeros(0, dtype=np.int32))[order],
            weights=(np.concatenate(weights) if weights else np.zeros(0, dtype=np.float32))[order],
            size=n,
            settings=settings,
        )

    def similarity(self, text: str) -> float:
        """The cosine similarity of ``text`` to its nearest indexed turn, 0 to 1."""
        counts = features(text, self.settings)
        if not counts or not self.size:
            return 0.0
        ids, values = _weighted(counts, self.idf)
        starts, ends = self.column_starts[ids], self.column_starts[ids + 1]
        lengths = ends - starts  # (features,) entries in each of the message's columns
        total = int(lengths.sum())
        if total == 0:
            return 0.0
        # the entries of those columns, gathered without a Python loop
        first = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        entries = first + np.arange(total)  # (total,)
        products = self.weights[entries] * np.repeat(values, lengths)
        scores = np.bincount(self.turns[entries], weights=products, minlength=self.size)  # (turns,)
        return float(min(1.0, scores.max()))

    # -- the files ----------------------------------------------------------------------

    def save(self, folder: str | os.PathLike[str], **about: Any) -> None:
        """Write ``scope.npz`` and ``scope.json`` into ``folder``; ``about`` goes into the header
        (what was indexed: counts of turns, labelled turns left out)."""
        path = Path(folder)
        np.savez_compressed(
            path / SCOPE_FILE,
            idf=self.idf,
            column_starts=self.column_starts,
            turns=self.turns,
            weights=self.weights,
        )
        header = {"format": SCOPE_FORMAT, "settings": asdict(self.settings), "indexed": self.size, **about}
        (path / SCOPE_HEADER).write_text(json.dumps(header, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_files(cls, data_file: Path, header: dict[str, Any], *, hint: str) -> ScopeIndex:
        """The index in ``data_file`` (``scope.npz``), described by its ``header`` (the object in
        ``scope.json``); :class:`ModelFolderError` with ``hint`` when the file is broken, of
        another format, or does not match the header."""
        if header.get("format") != SCOPE_FORMAT:
            found = header.get("format")
            message = (
                f"{data_file.with_name(SCOPE_HEADER)} is format {found!r}; this chatbot reads {SCOPE_FORMAT}"
            )
            raise ModelFolderError(message, hint=hint)
        try:
            settings = ScopeSettings(**header["settings"])
        except (KeyError, TypeError) as error:
            message = f"{data_file.with_name(SCOPE_HEADER)} has no valid settings ({error})"
            raise ModelFolderError(message, hint=hint) from error
        try:
            with np.load(data_file) as data:
                arrays = {name: data[name] for name in ("idf", "column_starts", "turns", "weights")}
        except (OSError, ValueError, KeyError, zlib.error) as error:
            message = f"{data_file} is not a readable scope index: {error}"
            raise ModelFolderError(message, hint=hint) from error
        size = header.get("indexed")
        if not isinstance(size, int) or not _consistent(arrays, settings, size):
            raise ModelFolderError(f"{data_file} does not match {SCOPE_HEADER}", hint=hint)
        return cls(**arrays, size=size, settings=settings, header=header)


def _weighted(counts: Counter[int], idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The feature ids of a text and their L2-normalised TF-IDF weights."""
    ids = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
    tf = np.fromiter(counts.values(), dtype=np.float32, count=len(counts))
    values = (1 + np.log(tf)) * idf[ids]
    norm = math.sqrt(float(np.dot(values, values))) or 1.0
    return ids, (values / norm).astype(np.float32)


def _consistent(arrays: dict[str, np.ndarray], settings: ScopeSettings, size: int) -> bool:
    """Whether the arrays have the shapes the header implies (a truncated or mixed-up file fails)."""
    starts, turns = arrays["column_starts"], arrays["turns"]
    return (
        arrays["idf"].shape == (settings.buckets,)
        and starts.shape == (settings.buckets + 1,)
        and turns.shape == arrays["weights"].shape == (int(starts[-1]),)
        and (len(turns) == 0 or int(turns.max()) < size)
    )
