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

On the CPU a conversation's keys and values are kept when its reply ends (:class:`_Kept`, up to
``kept_bytes`` in all, the least recently used dropped first). Its next prompt, which starts with
the same tokens (the earlier turns, then the new message), is prefilled from where they part, so
the first token of a later turn costs the new message, not the whole conversation. The system
prompt's turn (the ``shared`` tokens a caller names: the engine names the system prompt's) is
also kept on its own, under its tokens, the first time a prompt starting with it is prefilled:
every conversation that starts with the same system prompt takes it from there, so its first
turn too costs only the customer's message. Only those tokens are shared between conversations,
never what a customer wrote. A reply that reused kept keys and values is the reply computed from
scratch up to float rounding: the kept positions were computed one token at a time, or in
another prompt, not as one prompt.

Where the rows live depends on the device: on the CPU a :class:`~chatbot.fused.KVCache` that
grows with the replies in progress, a leaving reply's row filled by the last one
(:class:`_GrowingRows`); on a GPU :class:`~chatbot.fused.FixedSlots`, where a reply keeps its
slot and the decode step feeds itself from a CUDA graph (:class:`_FixedRows`). A greedy reply
takes the graph's own pick and log-probability; the logits come to the host only for replies
that sample or penalise repetition.

Speculative decoding (CPU, ``draft_tokens``): while a greedy reply is alone in the batch (or,
with ``draft_batches`` and a graph that pads rows, while every reply in it is greedy), each
step feeds it its last token and up to ``draft_tokens`` more, drafted from the model's training
replies (a :class:`~chatbot.drafting.DraftTable`), else its conversation and the bot's recent
replies (:mod:`chatbot.drafting`), and the graph scores every position fed.
The reply takes the greedy picks up to the first that differs from the draft, and that one: the
tokens of plain greedy decoding, several a step. Keys and values of the draft's rejected tokens
lie past the row's end and the next step overwrites them. (ONNX Runtime's CPU attention takes
several new tokens over a cache for one row only, unless the graph passes each row's count in
``query_seqlens``, ONNX Runtime 1.32+: without it a batch of several replies decodes plainly.)
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from chatbot.drafting import DRAFT_POSITIONS, DraftTable, RecentReplies, back_off, batch_draft_tokens, propose
from chatbot.fused import FixedSlots, FusedSession, KVCache, Prefiller, StepResult
from chatbot.generation import Token, reply_budget
from chatbot.sampling import Sampler, log_softmax
from chatbot.types import GenerationConfig

_DONE = object()
MIN_KEPT = 16  # fewer shared tokens than this: prefill the prompt whole
READER_WAIT_S = 0.005  # the most the next step waits for new replies' readers to take their first token


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
    slot: int = -1  # its row in the cache
    key: str | None = None  # its conversation (what its keys and values are kept under)
    generated: list[int] = field(default_factory=list)  # the tokens handed out
    shared: int = 0  # leading prompt tokens other conversations may share (system prompt), < len(prompt)
    reused: int = 0  # prompt tokens whose keys and values were kept (the last turn, a shared prefix)
    prompt_ids: np.ndarray | None = None  # the prompt as an array (drafting's, made once)
    taken: threading.Event = field(default_factory=threading.Event)  # the reader has its first token
    misses: int = 0  # drafts in a row of which greedy decoding kept nothing
    plain_steps: int = 0  # steps to decode plainly before drafting again (after misses)

    def history(self) -> np.ndarray:
        """The conversation so far: the prompt and the tokens handed out."""
        if self.prompt_ids is None:
            self.prompt_ids = np.asarray(self.prompt, dtype=np.int64)
        return np.concatenate([self.prompt_ids, np.asarray(self.generated, dtype=np.int64)])

    def cached_tokens(self) -> np.ndarray:
        """The tokens whose keys and values are in the cache (the last one handed out is not yet)."""
        return np.array((self.prompt + self.generated)[: self.length], dtype=np.int64)


@dataclass(eq=False)
class _Entry:
    """Kept keys and values: ``tokens``, and a copy of the positions from ``start`` on (the
    ones before are the shared entry of ``tokens[:start]``: a conversation's system prompt)."""

    tokens: np.ndarray
    start: int
    saved: list[np.ndarray]  # one (heads, len(tokens) - start, head_dim) array per cache buffer

    @property
    def nbytes(self) -> int:
        return sum(kept.nbytes for kept in self.saved)

    def copy_into(self, cache: KVCache, slot: int, end: int) -> None:
        """Write positions ``start..end`` into ``slot`` of ``cache``."""
        for buffer, kept in zip(cache.buffers, self.saved, strict=True):
            buffer[slot, :, self.start : end] = kept[:, : end - self.start]


class _Kept:
    """Keys and values kept between turns (CPU), least recently used first out.

    Under a conversation's id: what its last reply left in the cache (its prompt and reply),
    which its next prompt takes back. Under the bytes of its tokens: a system prompt's turn,
    which any prompt starting with those tokens copies; a conversation's own entry then holds
    only the positions after it, so a long system prompt is held once, not once per
    conversation. The positions where the tokens agree are copied into the prompt's slot and
    only the rest is prefilled.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.entries: OrderedDict[str | bytes, _Entry] = OrderedDict()
        self.nbytes = 0

    def keep(self, key: str | bytes, tokens: np.ndarray, cache: KVCache, slot: int, head: int = 0) -> None:
        """Copy the first ``len(tokens)`` positions of ``slot`` under ``key`` (if they fit the
        budget); when the first ``head`` tokens are kept as a shared entry, only the rest."""
        self._drop(key)
        start = 0
        if head >= MIN_KEPT and (shared := tokens[:head].tobytes()) in self.entries:
            self.entries.move_to_end(shared)  # used: last to go
            start = head
        length = len(tokens)
        size = (length - start) * sum(buffer[slot, :, :1].nbytes for buffer in cache.buffers)
        if length < MIN_KEPT or size > self.budget:
            return
        while self.entries and self.nbytes + size > self.budget:
            self._drop(next(iter(self.entries)))
        saved = [buffer[slot, :, start:length].copy() for buffer in cache.buffers]
        self.entries[key] = _Entry(tokens, start, saved)
        self.nbytes += size

    def restore(self, key: str | None, prompt: np.ndarray, cache: KVCache, slot: int, shared: int = 0) -> int:
        """Copy the kept positions that ``prompt`` starts with into ``slot``; how many (0: none).

        The conversation's own entry (``key``) is taken out: it is kept again, longer, when this
        reply ends. A shared entry for ``prompt[:shared]`` is copied and stays. The longer of
        the two is used. At least the prompt's last token is left to prefill: its logits pick
        the first token (``shared`` is less than the prompt's length)."""
        own = self._drop(key) if key is not None else None
        head = self.shared(prompt[:shared]) if shared >= MIN_KEPT else None
        agreed = 0
        if own is not None:
            n = min(len(own.tokens), len(prompt) - 1)
            same = own.tokens[:n] == prompt[:n]
            agreed = n if bool(same.all()) else int(np.argmin(same))
            # an entry that holds only what follows its system prompt needs that prompt's entry
            if own.start and not (head is not None and own.start == shared and agreed >= shared):
                agreed = 0
        if head is not None and shared >= agreed:
            head.copy_into(cache, slot, shared)
            return shared
        if own is None or agreed < MIN_KEPT:
            return 0
        if own.start and head is not None:
            head.copy_into(cache, slot, own.start)
        own.copy_into(cache, slot, agreed)
        return agreed

    def shared(self, tokens: np.ndarray) -> _Entry | None:
        """The entry kept for exactly ``tokens`` (now the most recently used), if any."""
        key = tokens.tobytes()
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def _drop(self, key: str | bytes) -> _Entry | None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry.nbytes
        return entry


class _GrowingRows:
    """CPU rows: slots 0..n-1 of a :class:`~chatbot.fused.KVCache` sized to the replies in
    progress; when a reply leaves, the last one moves into its slot (a step binds one view)."""

    def __init__(self, session: FusedSession, kept_bytes: int, prefill: Prefiller | None = None) -> None:
        self.session = session
        # prompts may run on another graph (int8 for int4; float32 keys quantised into an int8 cache)
        self.prefill_session: Prefiller = prefill or session
        self.cache = session.new_cache(1)
        self.kept = _Kept(kept_bytes)

    def place(self, active: list[_Reply]) -> int:
        return len(active)

    def prefill(self, reply: _Reply) -> StepResult:
        self.cache.reserve(reply.slot + 1, len(reply.prompt) + reply.budget)
        prompt = np.asarray(reply.prompt, dtype=np.int64)
        reply.reused = self.kept.restore(reply.key, prompt, self.cache, reply.slot, reply.shared)
        start = reply.reused
        result = self.prefill_session.step(self.cache, reply.slot, [reply.prompt[start:]], [start])
        head = prompt[: reply.shared]
        if len(head) >= MIN_KEPT and self.kept.shared(head) is None:  # the first prompt with it
            self.kept.keep(head.tobytes(), head, self.cache, reply.slot)
        return result

    def decode(self, active: list[_Reply]) -> StepResult:
        ids = np.array([[reply.last] for reply in active], dtype=np.int64)
        starts = np.array([reply.length for reply in active], dtype=np.int64)
        return self.session.step(self.cache, 0, ids, starts)

    def room(self, reply: _Reply) -> int:
        """The most tokens a step may feed ``reply`` (what its row of the cache holds)."""
        return self.cache.length - reply.length

    def verify(self, batch: list[_Reply], drafts: list[list[int]]) -> StepResult:
        """One step feeding each reply its last token and its draft (rows right-padded to the
        longest); the greedy pick after every position fed comes back in ``StepResult.tokens``.
        The keys and values of drafted tokens that turn out wrong stay past the row's end: later
        steps overwrite them. Several rows need a graph that pads rows (``query_seqlens``: ONNX
        Runtime's CPU GroupQueryAttention takes several new tokens over a cache for one row
        only without it)."""
        width = 1 + max(len(drafted) for drafted in drafts)
        ids = np.zeros((len(batch), width), dtype=np.int64)
        for row, (reply, drafted) in enumerate(zip(batch, drafts, strict=True)):
            ids[row, : 1 + len(drafted)] = [reply.last, *drafted]
        starts = [reply.length for reply in batch]
        if len(batch) == 1:
            return self.session.step(self.cache, batch[0].slot, ids, starts, scored=width)
        fed = [1 + len(drafted) for drafted in drafts]
        return self.session.step(self.cache, 0, ids, starts, scored=width, lengths=fed)

    def remove(self, active: list[_Reply], reply: _Reply) -> None:
        if reply.key is not None:
            self.kept.keep(reply.key, reply.cached_tokens(), self.cache, reply.slot, reply.shared)
        last = len(active) - 1
        if reply.slot != last:
            moved = active[last]
            self.cache.move(last, reply.slot, moved.length)
            active[reply.slot], moved.slot = moved, reply.slot
        active.pop()

    def overruled(self) -> None:
        """A reply took another token than the graph's pick (nothing to do: the host feeds every step)."""


class _FixedRows:
    """GPU rows: :class:`~chatbot.fused.FixedSlots`. A reply keeps its slot until it leaves; a new
    one takes the lowest free slot. The decode step feeds itself until the host changes a row."""

    def __init__(self, session: FusedSession, slots: int) -> None:
        self.slots = FixedSlots(session, slots)
        self.changed = True  # the device's next inputs are not the rows' (yet)

    def place(self, active: list[_Reply]) -> int:
        taken = {reply.slot for reply in active}
        return next(slot for slot in range(self.slots.slots) if slot not in taken)

    def prefill(self, reply: _Reply) -> StepResult:
        self.changed = True
        return self.slots.prefill(reply.slot, reply.prompt)

    def decode(self, active: list[_Reply]) -> StepResult:
        rows = 1 + max(reply.slot for reply in active)
        inputs = None
        if self.changed:  # free slots below ``rows`` run as token 0 at position 0
            tokens, positions = np.zeros(rows, np.int64), np.zeros(rows, np.int64)
            for reply in active:
                tokens[reply.slot], positions[reply.slot] = reply.last, reply.length
            inputs = (tokens, positions, positions.astype(np.int32))  # seqlens_k = length + 1 - 1
            self.changed = False
        return self.slots.decode(rows, inputs)

    def remove(self, active: list[_Reply], reply: _Reply) -> None:
        active.remove(reply)
        self.changed = True

    def overruled(self) -> None:
        self.changed = True


class BatchingGenerator:
    """Generates many replies at once over one fused graph; each caller sees only its own tokens.

    >>> generator = BatchingGenerator(FusedSession(path, folder.spec), stop_token_ids=(0,))  # doctest: +SKIP
    >>> [t.id for t in generator.generate([5, 6, 7], GenerationConfig())]                     # doctest: +SKIP

    ``max_batch`` bounds the replies in progress (more wait their turn); ``kept_bytes`` the
    memory for conversations' keys and values between turns (CPU; see the module docstring).
    ``prefill_session`` (CPU): another graph of the same model that runs the prompts, writing the
    same keys and values (int8 prefills for int4, whose prompts are 2-3× slower: README, "Fast
    graphs"), or a :class:`~chatbot.fused.QuantizingPrefill` writing an int8 cache from a
    float32-cache graph; ``session`` decodes.
    ``draft_tokens`` (CPU, 0: off): speculative decoding of greedy replies, see the module
    docstring, drafted from ``drafts`` (the model's training replies) first;
    ``drafted_tokens``, ``accepted_tokens`` and ``verify_steps`` count what it did. A reply drafts
    alone in the batch; with ``draft_batches`` (and a graph that pads rows) greedy replies in
    progress together draft in one step too, each draft cut so that the step feeds at most
    ``draft_positions`` positions (:func:`~chatbot.drafting.batch_draft_tokens`).
    """

    def __init__(
        self,
        session: FusedSession,
        *,
        stop_token_ids: Sequence[int],
        max_batch: int = 32,
        fixed_slots: bool | None = None,
        kept_bytes: int = 0,
        draft_tokens: int = 0,
        drafts: DraftTable | None = None,
        prefill_session: Prefiller | None = None,
        draft_batches: bool = False,
        draft_positions: int = DRAFT_POSITIONS,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        if prefill_session is not None and (
            prefill_session.cache_dtype != session.cache_dtype or prefill_session.spec != session.spec
        ):
            raise ValueError("a prefill graph must write the same keys and values as the decode graph")
        self.session = session
        self.device = session.device
        self.stop_token_ids: tuple[int, ...] = tuple(stop_token_ids)
        self.max_batch = max_batch
        self.spec = session.spec
        if fixed_slots is None:  # the GPU's way; on the CPU a cache that grows costs less memory
            fixed_slots = session.device == "cuda"
        if fixed_slots:
            self._rows: _FixedRows | _GrowingRows = _FixedRows(session, max_batch)
        else:
            self._rows = _GrowingRows(session, kept_bytes, prefill_session)
        self._waiting: list[_Reply] = []
        self._active: list[_Reply] = []
        self.reused_tokens = 0  # prompt tokens not prefilled: their keys and values were kept
        # speculative decoding needs the CPU's rows and a graph that scores every position it is fed
        can_draft = isinstance(self._rows, _GrowingRows) and session.scores_drafts
        self.draft_tokens = max(0, draft_tokens) if can_draft else 0
        # several greedy replies drafting in one step, where the graph pads rows (query_seqlens)
        self.draft_batches = bool(draft_batches and can_draft and session.pads_rows)
        self.draft_positions = draft_positions  # the most positions such a step feeds (batch_draft_tokens)
        self.drafted_tokens = 0  # tokens proposed by drafts
        self.accepted_tokens = 0  # of them, those greedy decoding agreed with
        self.verify_steps = 0  # replies' steps that fed a draft (several a step when replies draft together)
        self.drafts = drafts  # the model's training replies: drafted from first (chatbot.drafting)
        self._recent = RecentReplies()  # the bot's recent replies, drafted from after the conversation
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- the callers' side ------------------------------------------------------------------

    def queue_depth(self) -> int:
        """Replies waiting for a slot in the batch (a gauge: read without the lock)."""
        return len(self._waiting)

    def batch_size(self) -> int:
        """Replies in the decode batch now."""
        return len(self._active)

    @property
    def prefill_session(self) -> Prefiller:
        """The graph that runs the prompts: another one on the CPU where one was given, else ``session``."""
        return self._rows.prefill_session if isinstance(self._rows, _GrowingRows) else self.session

    def kept_bytes(self) -> int:
        """Memory holding conversations' keys and values between their turns (CPU; 0 on a GPU)."""
        return self._rows.kept.nbytes if isinstance(self._rows, _GrowingRows) else 0

    def generate(
        self,
        prompt_ids: Sequence[int],
        config: GenerationConfig,
        *,
        key: str | None = None,
        shared: int = 0,
    ) -> Iterator[Token]:
        """Yield the reply's tokens; the last one is a stop token unless the budget ran out.

        With a ``key`` (the conversation) the keys and values of its last reply are reused for
        what this prompt shares with it (CPU), and this reply's are kept for the next. The first
        ``shared`` tokens (the system prompt's turn) are computed once for every prompt that
        starts with them (CPU)."""
        budget = reply_budget(len(prompt_ids), config, self.spec.n_positions)
        sampler = Sampler(config, vocab_size=self.spec.vocab_size, prompt_ids=prompt_ids)
        # at least the prompt's last token is prefilled: its logits pick the first token
        shared = max(0, min(shared, len(prompt_ids) - 1))
        return self._tokens(_Reply(list(prompt_ids), budget, sampler, key=key, shared=shared))

    def _tokens(self, reply: _Reply) -> Iterator[Token]:
        with self._wake:
            self._start_thread()
            self._waiting.append(reply)
            self._wake.notify()
        try:
            while (item := reply.tokens.get()) is not _DONE:
                reply.taken.set()
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, list):  # the tokens of one step that verified a draft
                    yield from item
                    continue
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
                self._await_readers(admitted)
                if self._active:
                    self._decode()
            except Exception as error:  # a failed step fails the replies in it, not the server
                for reply in (*admitted, *self._active):
                    reply.tokens.put(error)
                self._active.clear()
                self._rows.overruled()

    def _admit(self, reply: _Reply) -> None:
        """Prefill ``reply`` into a free slot and hand out its first token."""
        if reply.abandoned:
            return
        reply.slot = self._rows.place(self._active)
        result = self._rows.prefill(reply)
        self.reused_tokens += reply.reused
        reply.length = len(reply.prompt)
        self._active.append(reply)
        self._hand_out([(reply, 0)], result)

    def _await_readers(self, admitted: list[_Reply]) -> None:
        """Let the readers of first tokens take them before the next step (a bounded wait).

        Otherwise the next step starts at once and keeps the CPU's cores busy (ONNX Runtime's
        threads, which also spin between steps), and a woken reader waits for a core: on this
        project's shared 2-core machine 2-5 ms for the first token while other work ran, where
        the hand-over alone is ~0.2 ms (README, "The scheduler's own cost").
        """
        deadline = time.monotonic() + READER_WAIT_S
        for reply in admitted:
            if reply.written:
                reply.taken.wait(max(0.0, deadline - time.monotonic()))

    def _decode(self) -> None:
        """One step for every reply in progress; then the finished ones leave."""
        batch = list(self._active)
        drafts = self._drafts(batch)
        if any(drafts):
            self._verify(batch, drafts)
            return
        result = self._rows.decode(batch)
        for reply in batch:
            reply.length += 1
        self._hand_out([(reply, reply.slot) for reply in batch], result)

    def _drafts(self, batch: list[_Reply]) -> list[list[int]]:
        """The tokens each reply feeds after its last one this step (all empty: a plain step).

        Greedy replies only: a reply alone, or replies together where :attr:`draft_batches`
        (every row then feeds as many positions as the longest draft, so each needs room for them).
        """
        plain: list[list[int]] = [[] for _ in batch]
        if not self.draft_tokens or not all(reply.sampler.argmax_only for reply in batch):
            return plain
        if len(batch) > 1 and not self.draft_batches:
            return plain
        assert isinstance(self._rows, _GrowingRows)
        most = batch_draft_tokens(len(batch), self.draft_tokens, self.draft_positions)
        if not most:
            return plain
        drafts = [self._draft(reply, most) for reply in batch]
        width = max(len(drafted) for drafted in drafts)
        if len(batch) > 1 and any(self._rows.room(reply) <= width for reply in batch):
            return plain
        return drafts

    def _draft(self, reply: _Reply, tokens: int) -> list[int]:
        """What ``reply`` drafts this step, at most ``tokens`` ([]: nothing, or it backs off after
        drafts that missed)."""
        if reply.plain_steps:  # its drafts missed lately: a wrong draft's wider step costs time
            reply.plain_steps -= 1
            return []
        assert isinstance(self._rows, _GrowingRows)
        # never past the budget (one more token comes from the step) or the row's end
        most = min(tokens, reply.budget - reply.written - 1, self._rows.room(reply) - 1)
        if most < 1:
            return []
        return propose(reply.history(), tokens=most, table=self.drafts, recent=self._recent)

    def _verify(self, batch: list[_Reply], drafts: list[list[int]]) -> None:
        """One step over each reply's last token and its draft: each takes the greedy picks up to
        the first that differs from its draft (and that one), as far as it goes on; a reply that
        drafted nothing takes one pick, as in a plain step."""
        assert isinstance(self._rows, _GrowingRows)
        result = self._rows.verify(batch, drafts)
        for row, (reply, drafted) in enumerate(zip(batch, drafts, strict=True)):
            picks, logprobs = result.tokens[row], result.logprobs[row]
            agreed = 0
            while agreed < len(drafted) and drafted[agreed] == int(picks[agreed]):
                agreed += 1
            if drafted:
                self.drafted_tokens += len(drafted)
                self.accepted_tokens += agreed
                self.verify_steps += 1
                reply.misses = 0 if agreed else reply.misses + 1
                reply.plain_steps = back_off(reply.misses)  # a reply unlike what drafts come from backs off
            taken = []
            for token, logprob in zip(picks[: agreed + 1], logprobs[: agreed + 1], strict=True):
                reply.length += 1  # the position of the token fed before it
                reply.sampler.accept(int(token))
                taken.append(Token(int(token), float(logprob)))
                self._record(reply, taken[-1].id)
                if self._finished(reply):
                    break
            reply.tokens.put(taken)  # one hand-over (one wake-up of the reader) for them all
        self._retire(batch)

    def _hand_out(self, rows: list[tuple[_Reply, int]], result: StepResult) -> None:
        """Pick each reply's next token from its row of ``result``; retire the finished replies.

        A greedy reply without a repetition penalty takes the graph's pick and log-probability;
        the others pick from the logits (copied to the host only then).
        """
        for reply, row in rows:
            graph_pick = int(result.next_token[row])
            if reply.sampler.argmax_only:
                reply.sampler.accept(graph_pick)
                token, logprob = graph_pick, float(result.next_logprob[row])
            else:
                logits = result.logits[row]
                token = reply.sampler.pick(logits)
                logprob = float(log_softmax(logits)[token])
                if token != graph_pick:
                    self._rows.overruled()
            reply.tokens.put(Token(token, logprob))
            self._record(reply, token)
        self._retire([reply for reply, _ in rows])

    def _record(self, reply: _Reply, token: int) -> None:
        """``token`` was handed to ``reply``'s reader: it is the token to feed next."""
        reply.last, reply.written = token, reply.written + 1
        reply.generated.append(token)

    def _finished(self, reply: _Reply) -> bool:
        return reply.abandoned or reply.written >= reply.budget or reply.last in self.stop_token_ids

    def _retire(self, replies: list[_Reply]) -> None:
        for reply in replies:
            if self._finished(reply):
                self._rows.remove(self._active, reply)  # first: its turn is kept before the reader hears
                reply.tokens.put(_DONE)
                if self.draft_tokens:
                    self._recent.add(reply.generated)
