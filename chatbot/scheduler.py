"""Continuous batching: the decode steps of concurrent replies run as one batch.

:class:`BatchingGenerator` is a :class:`~chatbot.generation.Generator` like any other: a
channel thread calls :meth:`~BatchingGenerator.generate` and iterates the tokens of its reply.
Behind it one scheduler thread owns a :class:`~chatbot.fused.KVCache` whose rows are slots and
loops:

1. admit waiting replies (up to ``max_batch`` in all): each prompt is prefilled alone into a
   free slot and its first token picked;
2. run one decode step for every reply in progress, each row at its own length;
3. hand each reply its token; a reply that stops (stop token, budget, end of the window, or its
   reader went away) leaves, and the last slot moves into the hole so the rows stay 0..n-1.

Replies join and leave between steps, prompts may have any length and every reply keeps its own
sampling settings and random generator. A decode step reads the weights once for the whole
batch, which is where the aggregate speed comes from on a CPU as on a GPU.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from chatbot.fused import FusedSession
from chatbot.generation import Token, reply_budget
from chatbot.sampling import Sampler
from chatbot.types import GenerationConfig

_DONE = object()


@dataclass(eq=False)
class _Reply:
    """One reply in the scheduler: its prompt, settings, where it stands, and its token queue."""

    prompt: list[int]
    budget: int
    sampler: Sampler
    tokens: queue.SimpleQueue[object] = field(default_factory=queue.SimpleQueue)
    length: int = 0  # tokens whose keys and values are in the cache
    written: int = 0  # tokens handed out
    last: int = -1  # the token to feed next
    abandoned: bool = False  # the reader stopped iterating


class BatchingGenerator:
    """Generates many replies at once over one fused graph; each caller sees only its own tokens.

    >>> generator = BatchingGenerator(FusedSession(path, folder.spec), stop_token_ids=(0,))  # doctest: +SKIP
    >>> [t.id for t in generator.generate([5, 6, 7], GenerationConfig())]                     # doctest: +SKIP

    ``max_batch`` bounds the replies in progress (more wait their turn).
    """

    device = "cpu"

    def __init__(self, session: FusedSession, *, stop_token_ids: Sequence[int], max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.session = session
        self.stop_token_ids: tuple[int, ...] = tuple(stop_token_ids)
        self.max_batch = max_batch
        self.spec = session.spec
        self._cache = session.new_cache(1)
        self._waiting: list[_Reply] = []
        self._active: list[_Reply] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- the callers' side ------------------------------------------------------------------

    def generate(self, prompt_ids: Sequence[int], config: GenerationConfig) -> Iterator[Token]:
        """Yield the reply's tokens; the last one is a stop token unless the budget ran out."""
        budget = reply_budget(len(prompt_ids), config, self.spec.n_positions)
        sampler = Sampler(config, vocab_size=self.spec.vocab_size, prompt_ids=prompt_ids)
        return self._tokens(_Reply(list(prompt_ids), budget, sampler))

    def _tokens(self, reply: _Reply) -> Iterator[Token]:
        with self._wake:
            self._start_thread()
            self._waiting.append(reply)
            self._wake.notify()
        try:
            while (item := reply.tokens.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, Token)
                yield item
        finally:
            reply.abandoned = True  # leaves the batch at the next step (no-op when it already left)

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="chatbot-scheduler", daemon=True)
            self._thread.start()

    # -- the scheduler thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._active:
                    self._wake.wait()
                room = self.max_batch - len(self._active)
                admitted, self._waiting = self._waiting[:room], self._waiting[room:]
            try:
                for reply in admitted:
                    self._admit(reply)
                if self._active:
                    self._decode()
            except Exception as error:  # a failed step fails the replies in it, not the server
                for reply in (*admitted, *self._active):
                    reply.tokens.put(error)
                self._active.clear()

    def _admit(self, reply: _Reply) -> None:
        """Prefill ``reply`` into the next free slot and hand out its first token."""
        if reply.abandoned:
            return
        slot = len(self._active)
        self._cache.reserve(slot + 1, len(reply.prompt) + reply.budget)
        result = self.session.step(self._cache, slot, [reply.prompt], [0])
        reply.length = len(reply.prompt)
        self._active.append(reply)
        self._hand_out([reply], result.logits)

    def _decode(self) -> None:
        """One step for every reply in progress; then the finished ones leave."""
        batch = self._active
        ids = np.array([[reply.last] for reply in batch], dtype=np.int64)
        starts = np.array([reply.length for reply in batch], dtype=np.int64)
        result = self.session.step(self._cache, 0, ids, starts)
        for reply in batch:
            reply.length += 1
        self._hand_out(batch, result.logits)

    def _hand_out(self, replies: list[_Reply], logits: np.ndarray) -> None:
        """Pick each reply's next token from its row of ``logits``; retire the finished replies."""
        peak = logits.max(axis=1, keepdims=True)
        log_norm = peak[:, 0] + np.log(np.exp(logits - peak).sum(axis=1))  # (rows,) logsumexp
        for row, reply in enumerate(replies):
            token = reply.sampler.pick(logits[row])
            reply.tokens.put(Token(token, float(logits[row, token] - log_norm[row])))
            reply.last, reply.written = token, reply.written + 1
        for reply in [
            r for r in replies if r.abandoned or r.written >= r.budget or r.last in self.stop_token_ids
        ]:
            reply.tokens.put(_DONE)
            self._retire(reply)

    def _retire(self, reply: _Reply) -> None:
        """Take ``reply`` out of the batch; the last slot moves into its place."""
        index = self._active.index(reply)
        last = len(self._active) - 1
        if index != last:
            moved = self._active[last]
            self._cache.move(last, index, moved.length)
            self._active[index] = moved
        self._active.pop()
