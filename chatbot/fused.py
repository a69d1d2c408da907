"""Running the fused graphs that ``training.export.fused_graph`` writes (``onnx/<variant>/model.onnx``).

A fused graph takes ``input_ids`` and ``position_ids`` (batch, sequence), ``seqlens_k`` (the
total length - 1 of each row, int32), ``total_sequence_length`` (int32 scalar) and a KV cache of
fixed size per layer, (batch, heads, max_length, head_dim), which GroupQueryAttention updates in
place: :class:`KVCache` holds those buffers and :class:`FusedSession` binds each one as both
the ``past_key_values.*`` input and the ``present.*`` output, so a step copies no cache. Rows of
the cache are slots: a conversation keeps its slot while it is generated, and the rows of a
batch may hold sequences of different lengths.

The graph returns the last position's ``logits`` (batch, vocab), its own greedy pick
``next_token`` (batch,) with that token's ``next_logprob``, and the next single-token step's
``next_position_ids`` and ``next_seqlens_k``. Graphs written since speculative decoding also
take ``score_from`` ([-n]: score the last n positions; [-1] for the last only) and return the
greedy pick after each of them, ``greedy_tokens`` (batch, scored) with ``greedy_logprobs``: a
step that feeds a row's last token and tokens drafted after it learns in one go how many of
them greedy decoding would have written (:attr:`FusedSession.scores_drafts`, ``StepResult.tokens``).

Two ways to step it:

* :meth:`FusedSession.step` over a :class:`KVCache` of numpy buffers that grow with the replies
  in progress (the CPU: memory is what limits it);
* :class:`FixedSlots`: buffers allocated once on the session's device at their final size, with
  the decode step feeding itself (its ``next_*`` outputs are the next step's inputs) and replayed
  from a CUDA graph per batch size on a GPU (README, "Fast graphs" and "Speed").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import numpy as np
import onnxruntime as ort

from chatbot import settings
from chatbot.errors import ModelFolderError
from chatbot.folder import ModelSpec
from chatbot.generation import CPU, CUDA, cache_dtype, open_session

INPUTS = ("input_ids", "position_ids", "seqlens_k", "total_sequence_length")
OUTPUTS = ("logits", "next_token", "next_logprob", "next_position_ids", "next_seqlens_k")
HOST_OUTPUTS = OUTPUTS[:3]  # what FusedSession.step brings back
SCORED = "score_from"  # input of newer graphs: the first position scored, from the end ([-1]: the last)
SCORED_OUTPUTS = ("greedy_tokens", "greedy_logprobs")  # (batch, scored): the pick after each one
QUERY_LENGTHS = "query_seqlens"  # input of graphs built on ONNX Runtime 1.32+: each row's new positions
LENGTH_STEP = 128  # the cache's length grows in steps of this many positions


def past_names(n_layer: int) -> list[str]:
    """``past_key_values.{layer}.{key|value}`` in graph order."""
    return [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    """``present.{layer}.{key|value}`` in graph order."""
    return [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


class KVCache:
    """One (capacity, heads, length, head_dim) buffer per layer for keys and one for values.

    Row ``r`` of every buffer is slot ``r``. The buffers grow (copying what they hold) when more
    slots or longer sequences are needed: slots double, the length rounds up to a multiple of
    :data:`LENGTH_STEP` (at most the model's window), so a cache for short replies stays small
    (GPT-2 124M with float32 keys and values: 75 MB per slot at 1024 positions, 19 MB at 256; with
    int8 ones, what ``chatbot export`` writes by default, a quarter of that).
    """

    def __init__(self, spec: ModelSpec, dtype: type[np.generic], capacity: int = 1, length: int = 1) -> None:
        self.spec = spec
        self.dtype = dtype
        self.buffers: list[np.ndarray] = []
        self.capacity = 0
        self.length = 0
        # the IOBinding of the last step's rows, kept while they and the buffers stay (decode
        # steps over the same rows rebind only their four small inputs: ~0.3-1 ms a token less)
        self.binding: tuple[FusedSession, int, int, ort.IOBinding] | None = None
        self.scored = 1  # the positions the binding's last step scored (its greedy outputs' width)
        self.reserve(capacity, length)

    def reserve(self, capacity: int, length: int = 1) -> None:
        """Make room for ``capacity`` slots of ``length`` positions, keeping what the slots hold."""
        if length > self.spec.n_positions:
            raise ValueError(f"{length} positions do not fit a {self.spec.n_positions}-token window")
        if capacity <= self.capacity and length <= self.length:
            return
        new_capacity = max(capacity, 2 * self.capacity) if capacity > self.capacity else self.capacity
        new_length = max(self.length, min(-(-length // LENGTH_STEP) * LENGTH_STEP, self.spec.n_positions))
        spec = self.spec
        shape = (new_capacity, spec.n_head, new_length, spec.head_dim)
        grown = [np.zeros(shape, dtype=self.dtype) for _ in range(2 * spec.n_layer)]
        for old, new in zip(self.buffers, grown, strict=False):
            new[: self.capacity, :, : self.length] = old
        self.buffers, self.capacity, self.length = grown, new_capacity, new_length
        self.binding = None  # it points into the old buffers

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``source`` into slot ``target``."""
        for buffer in self.buffers:
            buffer[target, :, :length] = buffer[source, :, :length]

    @property
    def nbytes(self) -> int:
        return sum(buffer.nbytes for buffer in self.buffers)


class StepResult:
    """One step's results for its rows: the greedy picks with their log-probabilities, and the
    logits, which are copied from the device (and converted to float32) only when asked for.

    The logits are read from the step's output buffer, which the next step over the same cache
    (or slots) overwrites: take them, or a copy, before that step.
    """

    def __init__(
        self,
        next_token: np.ndarray,
        next_logprob: np.ndarray,
        logits: np.ndarray | Callable[[], np.ndarray],
        tokens: np.ndarray | None = None,
        logprobs: np.ndarray | None = None,
    ) -> None:
        self.next_token = next_token  # (rows,) int64
        self.next_logprob = next_logprob  # (rows,) float32
        self._logits = logits
        # (rows, scored) the greedy pick after each scored position, and its log-probability
        self.tokens = tokens if tokens is not None else next_token[:, None]
        self.logprobs = logprobs if logprobs is not None else next_logprob[:, None]

    @property
    def logits(self) -> np.ndarray:
        """(rows, vocab) float32."""
        if callable(self._logits):
            self._logits = self._logits()
        return self._logits.astype(np.float32, copy=False)


class FusedSession:
    """An ONNX Runtime session on a fused graph, stepping rows of a :class:`KVCache`.

    >>> session = FusedSession(Path("models/v1/onnx/cpu-int8/model.onnx"), folder.spec)   # doctest: +SKIP
    >>> cache = session.new_cache(4)                                                      # doctest: +SKIP
    >>> session.step(cache, 0, [[5, 6, 7]], [0])                                          # doctest: +SKIP

    A session may be shared; a cache may not (one thread steps it at a time). With the CUDA
    provider, ``cuda_graphs`` lets :class:`FixedSlots` replay its decode steps from CUDA graphs;
    ``initializers`` replace the graph's own (the int8 activations for this CPU: :mod:`chatbot.cpu`).
    On the CPU an int8 cache's attention runs on the native kernel where it builds
    (:mod:`chatbot.kernels`; :attr:`attention` says which), unless ``native_attention`` is False.
    """

    def __init__(
        self,
        path: Path,
        spec: ModelSpec,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        cuda_graphs: bool = False,
        initializers: dict[str, np.ndarray] | None = None,
        native_attention: bool = True,
    ) -> None:
        providers = providers or [CPU]
        self.device = "cuda" if providers[0] == CUDA else "cpu"
        self.cuda_graphs = cuda_graphs and self.device == "cuda"
        if self.device == "cuda":
            # cuDNN's attention kernel beats XQA for GPT-2's heads (GPU.md: 5-13 %); read at session creation
            settings.prefer_cudnn_attention()
        chosen: list[str | tuple[str, dict[str, str]]] = list(providers)
        if self.cuda_graphs:
            chosen[0] = (CUDA, {"enable_cuda_graph": "1"})
        self.session = open_session(
            path,
            providers=chosen,
            threads=threads,
            hint="build the variant again with `chatbot export MODEL_DIR`",
            log_severity=3,
            initializers=initializers,
            # on the CPU, an int8 cache's attention on the native kernel where it builds (chatbot.kernels);
            # False spares a graph known to keep float keys and values the look (~0.25 s on GPT-2 124M)
            native_attention=native_attention,
        )
        self.device = "cuda" if CUDA in self.session.get_providers() else "cpu"  # what it really runs on
        self.attention: str = self.session.chatbot_attention  # "native" or "onnxruntime"
        self.path = path
        self.spec = spec
        self._past = past_names(spec.n_layer)
        self._present = present_names(spec.n_layer)
        self._check_io()
        self.cache_dtype = cache_dtype(self.session, self._past[0])
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        # whether a step can score every position it feeds (graphs older than speculative decoding cannot)
        self.scores_drafts = SCORED in inputs and set(SCORED_OUTPUTS) <= outputs
        self._host_outputs = HOST_OUTPUTS + (SCORED_OUTPUTS if self.scores_drafts else ())
        # whether a step's rows may feed different numbers of tokens (right-padded to the longest):
        # drafts of several replies verified in one step (GroupQueryAttention's query_seqlens)
        self.pads_rows = QUERY_LENGTHS in inputs
        self.logits_dtype = np.float16 if self.cache_dtype == np.float16 else np.float32

    def _check_io(self) -> None:
        names = {i.name for i in self.session.get_inputs()} | {o.name for o in self.session.get_outputs()}
        missing = [n for n in (*INPUTS, *OUTPUTS, *self._past, *self._present) if n not in names]
        if missing:
            raise ModelFolderError(
                f"{self.path} is not a fused decoder graph of this version (it has no {missing[0]})",
                hint="build the variant again with `chatbot export MODEL_DIR`",
            )

    def new_cache(self, capacity: int = 1, length: int = 1) -> KVCache:
        """A cache of ``capacity`` slots holding ``length`` positions each (both grow on demand)."""
        return KVCache(self.spec, self.cache_dtype, capacity, length)

    def step(
        self,
        cache: KVCache,
        first_row: int,
        ids: np.ndarray | list[list[int]],
        starts: np.ndarray | list[int],
        *,
        scored: int = 1,
        lengths: np.ndarray | list[int] | None = None,
    ) -> StepResult:
        """Run ``ids`` (rows, sequence) on slots ``first_row ..``; row r's tokens go at ``starts[r]``.

        Every row feeds the whole sequence (one token, when decoding a batch), or with
        ``lengths`` (a graph that :attr:`pads_rows`) row r only its first ``lengths[r]`` tokens,
        the rest being padding that is neither cached nor meant to be read; the cache rows
        before ``starts[r]`` must hold that row's earlier tokens. ``scored``: the last positions
        whose greedy picks come back in ``StepResult.tokens`` (more than one needs a graph that
        :attr:`scores_drafts`). CPU only: the cache is host memory.
        """
        if self.device != "cpu":
            raise ValueError("FusedSession.step binds host memory: use FixedSlots on the GPU")
        ids = np.asarray(ids, dtype=np.int64)
        starts = np.asarray(starts, dtype=np.int64)
        rows, length = ids.shape
        if lengths is not None and not self.pads_rows:
            raise ValueError(f"{self.path} feeds every row the same tokens: build the variant again")
        fed = np.full(rows, length, dtype=np.int64) if lengths is None else np.asarray(lengths, np.int64)
        ends = starts + fed
        if rows < 1 or first_row + rows > cache.capacity or int((starts + length).max()) > cache.length:
            raise ValueError(f"rows {first_row}..{first_row + rows} or lengths {ends} do not fit the cache")
        binding = self._cache_binding(cache, first_row, rows)
        binding.bind_cpu_input("input_ids", ids)
        positions = starts[:, None] + np.arange(length, dtype=np.int64)
        binding.bind_cpu_input("position_ids", np.minimum(positions, self.spec.n_positions - 1))  # padding
        binding.bind_cpu_input("seqlens_k", (ends - 1).astype(np.int32))
        total = max(int(ends.max()), length)
        binding.bind_cpu_input("total_sequence_length", np.array(total, dtype=np.int32))
        if self.pads_rows:
            binding.bind_cpu_input(QUERY_LENGTHS, fed.astype(np.int32))
        if self.scores_drafts:  # bound every step: the cache keeps the binding between steps
            binding.bind_cpu_input(SCORED, np.array([-scored], dtype=np.int64))
            if scored != cache.scored:  # their shape changes: let the run allocate them anew
                for name in SCORED_OUTPUTS:
                    binding.bind_output(name, "cpu")
                cache.scored = scored
        elif scored != 1:
            raise ValueError(f"{self.path} scores the last position only: build the variant again")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        logits, next_token, next_logprob = (value.numpy() for value in outputs[:3])
        tokens, logprobs = (
            (outputs[3].numpy().copy(), outputs[4].numpy().copy()) if self.scores_drafts else (None, None)
        )
        return StepResult(
            next_token.copy(), next_logprob.copy(), logits, tokens, logprobs
        )  # (see StepResult)

    def _cache_binding(self, cache: KVCache, first_row: int, rows: int) -> ort.IOBinding:
        """A binding of slots ``first_row ..`` of ``cache`` as past and present, and of the host
        outputs; the cache keeps it for the next step over the same rows."""
        kept = cache.binding
        if kept is not None and kept[0] is self and kept[1:3] == (first_row, rows):
            return kept[3]
        binding = self.session.io_binding()
        for name in self._host_outputs:  # first, so that they come first in get_outputs()
            binding.bind_output(name, "cpu")
        for past, present, buffer in zip(self._past, self._present, cache.buffers, strict=True):
            view = buffer[first_row : first_row + rows]  # contiguous: whole rows of a C-order array
            address = view.ctypes.data  # the same memory in and out: GQA writes the new keys in place
            binding.bind_input(past, "cpu", 0, cache.dtype, list(view.shape), address)
            binding.bind_output(present, "cpu", 0, cache.dtype, list(view.shape), address)
        cache.binding, cache.scored = (self, first_row, rows, binding), 1
        return binding


Ids: TypeAlias = "np.ndarray | list[list[int]]"  # a step's token ids, (rows, positions)
Starts: TypeAlias = "np.ndarray | list[int]"  # each row's first position


class QuantizingPrefill:
    """Prompts prefilled on a float32-cache graph, their keys and values stored in an int8 cache.

    ONNX Runtime's attention over an int8 cache (what ``chatbot export`` writes by default) is fast for
    one new position a row and ~3x slower than float32's over a prompt (README, "Fast graphs").
    So a prompt runs on ``session``, the same weights with a float32 cache, over a one-row scratch;
    the positions it wrote are stored in the int8 cache as ``round(x / scale)`` clipped to
    -128..127, one ``scale`` per channel: exactly what the int8 graph's own attention stores
    (``training.export.kv_cache``). Kept positions before the prompt (an earlier turn, a system
    prompt) are read back from the int8 cache into the scratch first, as the int8 graph would
    read them. Used where a :class:`FusedSession` prefills (its :meth:`step`, one row at a time).
    """

    def __init__(self, session: FusedSession, scales: np.ndarray) -> None:
        spec = session.spec
        channels = spec.n_head * spec.head_dim
        if session.cache_dtype != np.float32 or scales.shape != (spec.n_layer, 2, channels):
            raise ValueError(
                f"{session.path} must keep float32 keys and values (scales: layers, 2, {channels})"
            )
        self.session = session
        self.spec = spec
        self.path = session.path
        self.device = session.device
        self.cache_dtype: type[np.generic] = np.int8  # what it writes
        # one (heads, 1, head_dim) array per cache buffer, in its order (key, value of each layer)
        shaped = scales.astype(np.float32).reshape(2 * spec.n_layer, spec.n_head, 1, spec.head_dim)
        self._scales = list(shaped)
        self._inverse = [np.float32(1) / scale for scale in shaped]
        self._scratch = session.new_cache(1)

    def step(self, cache: KVCache, row: int, ids: Ids, starts: Starts, *, scored: int = 1) -> StepResult:
        """:meth:`FusedSession.step` of one row's prompt into row ``row`` of the int8 ``cache``."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.shape[0] != 1 or cache.dtype != np.int8:
            raise ValueError("QuantizingPrefill prefills one row of an int8 cache at a time")
        start = int(np.asarray(starts)[0])
        end = start + ids.shape[1]
        scratch = self._scratch
        scratch.reserve(1, end)
        for floats, held, scale in zip(scratch.buffers, cache.buffers, self._scales, strict=True):
            np.multiply(held[row, :, :start], scale, out=floats[0, :, :start])
        result = self.session.step(scratch, 0, ids, [start], scored=scored)
        for floats, held, inverse in zip(scratch.buffers, cache.buffers, self._inverse, strict=True):
            levels = floats[0, :, start:end] * inverse
            np.rint(levels, out=levels)
            np.clip(levels, -128, 127, out=levels)
            held[row, :, start:end] = levels
        return result


Prefiller: TypeAlias = "FusedSession | QuantizingPrefill"  # what runs prompts into a KVCache


def batch_buckets(slots: int) -> tuple[int, ...]:
    """The batch sizes :class:`FixedSlots` runs (a CUDA graph each): powers of two, then ``slots``."""
    sizes = [1 << i for i in range(slots.bit_length()) if 1 << i < slots]
    return (*sizes, slots)


class FixedSlots:
    """A KV cache of ``slots`` rows at the full window, allocated once on the session's device,
    and decode steps that feed themselves.

    The buffers never move, which is what a CUDA graph needs: a decode step over the first ``b``
    rows (``b`` from :func:`batch_buckets`) is captured once per ``b`` and replayed. The step's
    inputs live in two sets of device buffers, A and B: a step reads A and writes its
    ``next_token``/``next_position_ids``/``next_seqlens_k`` into B, the next one reads B and
    writes A (one CUDA graph per batch size and set: reusing a graph id for another shape
    silently replays the first capture, GPU.md). Per token only the ids and their
    log-probabilities come back to the host; the logits only when a caller asks.

    When the host changed what the rows hold (a reply joined, left, or picked a token other than
    the graph's greedy one), :meth:`decode` takes the rows' inputs from the host instead.
    Rows without a reply still run (as token 0 at position 0, writing only their own free slot).

    One thread at a time. On the CPU it runs the same way without CUDA graphs (the suite tests it so).
    """

    def __init__(self, session: FusedSession, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        self.session = session
        self.slots = slots
        self.buckets = batch_buckets(slots)
        spec = session.spec
        self.length = spec.n_positions
        shape = (slots, spec.n_head, self.length, spec.head_dim)
        self._row_bytes = int(np.prod(shape[1:])) * np.dtype(session.cache_dtype).itemsize
        self.kv = [self._zeros(shape, session.cache_dtype) for _ in range(2 * spec.n_layer)]
        # inputs of one step / outputs of the previous one: two sets, used in turn
        self._ids = [self._zeros((slots, 1), np.int64) for _ in range(2)]
        self._positions = [self._zeros((slots, 1), np.int64) for _ in range(2)]
        self._seqlens = [self._zeros((slots,), np.int32) for _ in range(2)]
        self._logits = self._zeros((slots, spec.vocab_size), session.logits_dtype)
        self._logprob = self._zeros((slots,), np.float32)
        self._total = np.array(self.length, dtype=np.int32)  # fixed: every row says its own length
        self._last_only = np.array([-1], dtype=np.int64)  # score_from: the last position
        self._one_each = np.ones(slots, dtype=np.int32)  # query_seqlens of a decode step
        self._bindings: dict[tuple[int, int], tuple[ort.IOBinding, ort.RunOptions]] = {}
        self._set = 0  # the input set the next decode step reads

    def _zeros(self, shape: tuple[int, ...], dtype: type[np.generic]) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=dtype), self.session.device, 0)

    @property
    def nbytes(self) -> int:
        return self._row_bytes * self.slots * len(self.kv)

    def prefill(self, slot: int, prompt: list[int] | np.ndarray) -> StepResult:
        """Run ``prompt`` into ``slot`` (which it then holds from position 0); its first pick."""
        ids = np.asarray(prompt, dtype=np.int64)[None, :]
        length = ids.shape[1]
        if not 0 <= slot < self.slots or not 0 < length <= self.length:
            raise ValueError(f"slot {slot} or a prompt of {length} tokens does not fit")
        session, device = self.session, self.session.device
        binding = session.session.io_binding()
        inputs = {
            "input_ids": ids,
            "position_ids": np.arange(length, dtype=np.int64)[None, :],
            "seqlens_k": np.array([length - 1], dtype=np.int32),
        }
        for name, array in inputs.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
        binding.bind_cpu_input("total_sequence_length", np.array(length, dtype=np.int32))
        if session.scores_drafts:
            binding.bind_cpu_input(SCORED, self._last_only)
        if session.pads_rows:
            binding.bind_cpu_input(QUERY_LENGTHS, np.array([length], dtype=np.int32))
        for name in OUTPUTS:  # first, so that they come first in get_outputs()
            binding.bind_output(name, device)
        self._bind_cache(binding, slot, 1)
        session.session.run_with_iobinding(binding, self._no_graph())
        logits, next_token, next_logprob = binding.get_outputs()[:3]
        return StepResult(next_token.numpy(), next_logprob.numpy(), logits.numpy)

    def decode(
        self, rows: int, inputs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    ) -> StepResult:
        """One decode step over slots ``0 .. rows - 1`` (run as the next bucket up).

        ``inputs``: each row's (token, position, seqlens_k), when the host changed them since the
        last step; ``None`` feeds the step its predecessor's outputs.
        """
        bucket = next((b for b in self.buckets if b >= rows), None)
        if bucket is None or rows < 1:
            raise ValueError(f"{rows} rows do not fit {self.slots} slots")
        if inputs is not None:
            self._write_inputs(*inputs)
        binding, options = self._binding(bucket, self._set)
        self.session.session.run_with_iobinding(binding, options)
        self._set ^= 1
        # outputs in binding order: next_token, next_logprob, then the rest (see _binding)
        outputs = binding.get_outputs()
        next_token, next_logprob = outputs[0].numpy()[:rows], outputs[1].numpy()[:rows]

        def logits() -> np.ndarray:
            return np.asarray(outputs[2].numpy()[:rows])

        return StepResult(next_token, next_logprob, logits)

    def _write_inputs(self, tokens: np.ndarray, positions: np.ndarray, seqlens: np.ndarray) -> None:
        rows = len(tokens)
        padded = [np.zeros((self.slots, 1), np.int64), np.zeros((self.slots, 1), np.int64)]
        padded[0][:rows, 0], padded[1][:rows, 0] = tokens, positions
        lengths = np.zeros(self.slots, np.int32)
        lengths[:rows] = seqlens
        current = self._set
        self._ids[current].update_inplace(padded[0])
        self._positions[current].update_inplace(padded[1])
        self._seqlens[current].update_inplace(lengths)

    def _binding(self, bucket: int, current: int) -> tuple[ort.IOBinding, ort.RunOptions]:
        """The binding of a ``bucket``-row step reading input set ``current``, made once and reused."""
        key = (bucket, current)
        if key in self._bindings:
            return self._bindings[key]
        device, spare = self.session.device, 1 - current
        binding = self.session.session.io_binding()

        def bind(
            name: str, value: ort.OrtValue, dtype: type[np.generic], shape: list[int], output: bool
        ) -> None:
            bind_one = binding.bind_output if output else binding.bind_input
            bind_one(name, device, 0, dtype, shape, value.data_ptr())

        bind("next_token", self._ids[spare], np.int64, [bucket], True)
        bind("next_logprob", self._logprob, np.float32, [bucket], True)
        bind("logits", self._logits, self.session.logits_dtype, [bucket, self.session.spec.vocab_size], True)
        bind("next_position_ids", self._positions[spare], np.int64, [bucket, 1], True)
        bind("next_seqlens_k", self._seqlens[spare], np.int32, [bucket], True)
        bind("input_ids", self._ids[current], np.int64, [bucket, 1], False)
        bind("position_ids", self._positions[current], np.int64, [bucket, 1], False)
        bind("seqlens_k", self._seqlens[current], np.int32, [bucket], False)
        binding.bind_cpu_input("total_sequence_length", self._total)
        if self.session.scores_drafts:
            binding.bind_cpu_input(SCORED, self._last_only)
        if self.session.pads_rows:  # one new token a row (kept alive with the binding: see __init__)
            binding.bind_cpu_input(QUERY_LENGTHS, self._one_each[:bucket])
        self._bind_cache(binding, 0, bucket)
        options = ort.RunOptions()
        if self.session.cuda_graphs:  # one graph per (batch size, input set)
            options.add_run_config_entry("gpu_graph_id", str(2 * self.buckets.index(bucket) + current))
        self._bindings[key] = (binding, options)
        return binding, options

    def _bind_cache(self, binding: ort.IOBinding, first_slot: int, rows: int) -> None:
        session, spec = self.session, self.session.spec
        shape = [rows, spec.n_head, self.length, spec.head_dim]
        for past, present, buffer in zip(session._past, session._present, self.kv, strict=True):
            address = buffer.data_ptr() + first_slot * self._row_bytes  # in and out: written in place
            binding.bind_input(past, session.device, 0, session.cache_dtype, shape, address)
            binding.bind_output(present, session.device, 0, session.cache_dtype, shape, address)

    def _no_graph(self) -> ort.RunOptions:
        options = ort.RunOptions()
        if self.session.cuda_graphs:
            options.add_run_config_entry("gpu_graph_id", "-1")  # prompts vary in length: never captured
        return options
