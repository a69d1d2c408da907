"""Running the fused graphs that ``training.graph`` writes (``onnx/<variant>/model.onnx``).

A fused graph takes ``input_ids`` and ``position_ids`` (batch, sequence), ``seqlens_k`` (the
total length - 1 of each row, int32), ``total_sequence_length`` (int32 scalar) and a KV cache of
fixed size per layer, (batch, heads, max_length, head_dim), which GroupQueryAttention updates in
place: :class:`KVCache` holds those buffers and :class:`FusedSession` binds each one as both
the ``past_key_values.*`` input and the ``present.*`` output, so a step copies no cache. Rows of
the cache are slots: a conversation keeps its slot while it is generated, and the rows of a
batch may hold sequences of different lengths.

The graph returns the last position's ``logits`` (batch, vocab) and its own greedy pick
``next_token`` (batch,).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chatbot.errors import ModelFolderError
from chatbot.folder import ModelSpec
from chatbot.generation import cache_dtype, open_session

INPUTS = ("input_ids", "position_ids", "seqlens_k", "total_sequence_length")
OUTPUTS = ("logits", "next_token")
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
    (GPT-2 124M in fp32: 75 MB per slot at 1024 positions, 19 MB at 256).
    """

    def __init__(self, spec: ModelSpec, dtype: type[np.generic], capacity: int = 1, length: int = 1) -> None:
        self.spec = spec
        self.dtype = dtype
        self.buffers: list[np.ndarray] = []
        self.capacity = 0
        self.length = 0
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

    def move(self, source: int, target: int, length: int) -> None:
        """Copy the first ``length`` positions of slot ``source`` into slot ``target``."""
        for buffer in self.buffers:
            buffer[target, :, :length] = buffer[source, :, :length]

    @property
    def nbytes(self) -> int:
        return sum(buffer.nbytes for buffer in self.buffers)


@dataclass(frozen=True)
class StepResult:
    logits: np.ndarray  # (rows, vocab) float32
    next_token: np.ndarray  # (rows,) int64: the greedy pick


class FusedSession:
    """An ONNX Runtime session on a fused graph, stepping rows of a :class:`KVCache`.

    >>> session = FusedSession(Path("models/v1/onnx/cpu-int8/model.onnx"), folder.spec)   # doctest: +SKIP
    >>> cache = session.new_cache(4)                                                      # doctest: +SKIP
    >>> session.step(cache, 0, [[5, 6, 7]], [0])                                          # doctest: +SKIP

    A session may be shared; a cache may not (one thread steps it at a time).
    """

    def __init__(
        self,
        path: Path,
        spec: ModelSpec,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.session = open_session(
            path,
            providers=providers or ["CPUExecutionProvider"],
            threads=threads,
            hint="build the variant again with `chatbot export MODEL_DIR`",
            log_severity=3,
        )
        self.path = path
        self.spec = spec
        self._past = past_names(spec.n_layer)
        self._present = present_names(spec.n_layer)
        self._check_io()
        self.cache_dtype = cache_dtype(self.session, self._past[0])

    def _check_io(self) -> None:
        names = {i.name for i in self.session.get_inputs()} | {o.name for o in self.session.get_outputs()}
        missing = [n for n in (*INPUTS, *OUTPUTS, *self._past, *self._present) if n not in names]
        if missing:
            raise ModelFolderError(
                f"{self.path} is not a fused decoder graph (it has no {missing[0]})",
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
    ) -> StepResult:
        """Run ``ids`` (rows, sequence) on slots ``first_row ..``; row r's tokens go at ``starts[r]``.

        All rows have the same number of new tokens (one, when decoding a batch); the cache
        rows before ``starts[r]`` must hold that row's earlier tokens.
        """
        ids = np.asarray(ids, dtype=np.int64)
        starts = np.asarray(starts, dtype=np.int64)
        rows, length = ids.shape
        ends = starts + length
        if rows < 1 or first_row + rows > cache.capacity or int(ends.max()) > cache.length:
            raise ValueError(f"rows {first_row}..{first_row + rows} or lengths {ends} do not fit the cache")
        binding = self.session.io_binding()
        for name in OUTPUTS:  # first, so that they come first in get_outputs()
            binding.bind_output(name, "cpu")
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("position_ids", starts[:, None] + np.arange(length, dtype=np.int64))
        binding.bind_cpu_input("seqlens_k", (ends - 1).astype(np.int32))
        binding.bind_cpu_input("total_sequence_length", np.array(int(ends.max()), dtype=np.int32))
        for past, present, buffer in zip(self._past, self._present, cache.buffers, strict=True):
            view = buffer[first_row : first_row + rows]  # contiguous: whole rows of a C-order array
            address = view.ctypes.data  # the same memory in and out: GQA writes the new keys in place
            binding.bind_input(past, "cpu", 0, cache.dtype, list(view.shape), address)
            binding.bind_output(present, "cpu", 0, cache.dtype, list(view.shape), address)
        self.session.run_with_iobinding(binding)
        logits, next_token = (value.numpy() for value in binding.get_outputs()[:2])
        return StepResult(logits.astype(np.float32, copy=False), next_token)
