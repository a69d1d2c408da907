"""Generation with ONNX Runtime: the KV cache of each step feeds the next, tensors stay on the device.

One :class:`Generator` interface; :class:`OnnxGenerator` is the product. It drives the reference
export (``onnx/model.onnx``, a decoder with past key values, written by training.export.standard_graph or by
optimum) through I/O binding: the ``present.*`` outputs of one step are bound as the
``past_key_values.*`` inputs of the next without a copy, on the GPU when ``CUDAExecutionProvider``
is available and on the CPU otherwise. Only the last position's logits come back to the host to
pick the next token.
"""

from __future__ import annotations

import ctypes
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from chatbot import kernels, settings
from chatbot.errors import ChatbotError, ModelFolderError
from chatbot.folder import TABLES_FILE, ModelFolder
from chatbot.sampling import Sampler, log_softmax
from chatbot.types import GenerationConfig

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Token:
    """One generated token and the log-probability the model gave it (before any sampling filter)."""

    id: int
    logprob: float


class Generator(Protocol):
    """Anything that continues a prompt one token at a time."""

    stop_token_ids: tuple[int, ...]

    def generate(
        self,
        prompt_ids: Sequence[int],
        config: GenerationConfig,
        *,
        key: str | None = None,
        shared: int = 0,
    ) -> Iterator[Token]:
        """Yield new tokens; the last one is a stop token, unless ``max_new_tokens`` ran out first.

        ``key`` names the conversation: a generator may keep the keys and values of its last
        reply and compute only what is new in its next prompt (the earlier turns are the same
        tokens). ``shared`` says how many leading tokens are the same for other conversations
        (the system prompt's turn), which a generator may compute once for all of them. One that
        keeps nothing ignores both.
        """
        ...


# One forward pass: (new token ids, position of the first one) -> last position's logits (vocab,).
# The step keeps its own KV cache between calls.
Step = Callable[[Sequence[int], int], np.ndarray]


def decode(
    step: Step,
    prompt_ids: Sequence[int],
    config: GenerationConfig,
    *,
    n_positions: int,
    vocab_size: int,
    stop_token_ids: Sequence[int],
) -> Iterator[Token]:
    """The decode loop every generator shares: prefill, then one token per step until a stop token,
    ``max_new_tokens`` or the end of the context window. Only ``step`` differs between backends."""
    budget = reply_budget(len(prompt_ids), config, n_positions)
    sampler = Sampler(config, vocab_size=vocab_size, prompt_ids=prompt_ids)
    ids, start = list(prompt_ids), 0
    for _ in range(budget):
        logits = step(ids, start)
        token = sampler.pick(logits)
        yield Token(token, float(log_softmax(logits)[token]))
        if token in stop_token_ids:
            return
        start, ids = start + len(ids), [token]


def reply_budget(n_prompt: int, config: GenerationConfig, n_positions: int) -> int:
    """How many tokens a reply to a prompt of ``n_prompt`` tokens may have: ``max_new_tokens``,
    bounded by the room left in the window; ValueError for an empty prompt or a full window."""
    budget = min(config.max_new_tokens, n_positions - n_prompt)
    if n_prompt == 0 or budget < 1:
        raise ValueError(f"a prompt of {n_prompt} tokens leaves no room in a {n_positions}-token window")
    return budget


STOP_SPINNING = "session.force_spinning_stop"  # a session's threads stop spinning when its run ends


def open_session(
    path: Path,
    *,
    providers: Sequence[str | tuple[str, dict[str, str]]],
    hint: str,
    threads: int | None = None,
    log_severity: int = 2,
    initializers: dict[str, np.ndarray] | None = None,
    native_attention: bool = False,
) -> ort.InferenceSession:
    """An ONNX Runtime session on ``path``; :class:`ModelFolderError` naming the file and ``hint``
    when ONNX Runtime cannot load it. ``initializers`` replace the graph's own of the same names.
    ``native_attention``: on the CPU, attention over an int8 cache runs on the kernel compiled
    here (:mod:`chatbot.kernels`) where ``$CHATBOT_ATTENTION`` lets it; the session's
    ``chatbot_attention`` says which ran ("native" or "onnxruntime").

    Its threads stop spinning when a run ends (``session.force_spinning_stop``). Each session has
    a pool of its own, whose threads otherwise spin on after a run and keep the cores from the
    next run of another session in the process: int4's decode with int8's prefill ran each step
    1.9x slower on a 2-core machine, and the prefill 1.9x slower, than with the other session's
    threads stopped (README, "The scheduler's own cost"); a session alone runs as fast either way.
    """
    options = ort.SessionOptions()
    options.log_severity_level = log_severity
    options.add_session_config_entry(STOP_SPINNING, "1")
    # ONNX Runtime reads these values where they lie: they are kept with the session below
    values = {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in (initializers or {}).items()}
    for name, value in values.items():
        options.add_initializer(name, value)
    if threads:
        options.intra_op_num_threads = threads
    on_cpu = set(_provider_names(providers)) == {CPU}
    session = _native_session(path, options) if native_attention and on_cpu else None
    if session is None:
        try:
            with warnings.catch_warnings():
                # a provider this build lacks is only a warning to ONNX Runtime; _check_cuda says it plainly
                warnings.filterwarnings("ignore", message="Specified provider", category=UserWarning)
                session = ort.InferenceSession(str(path), options, providers=list(providers))
        except Exception as error:  # ORT raises Fail, InvalidProtobuf, InvalidGraph... from pybind
            raise ModelFolderError(f"{path} cannot be loaded by ONNX Runtime: {error}", hint=hint) from error
        session.chatbot_attention = "onnxruntime"
    _check_cuda(session, providers, path)
    session.chatbot_initializers = values
    warm_file(path.parent / TABLES_FILE)
    _release_freed_memory()
    return session


def _release_freed_memory() -> None:
    """Hand the heap that loading a graph freed back to the system (glibc's ``malloc_trim``; a no-op
    elsewhere). Parsing a graph leaves its freed pages with the allocator, counted as resident: on
    GPT-2 124M's int8 graph, 277 MB resident after the load and a step, 229 after the trim (335 and
    239 where its attention was rewritten first, :mod:`chatbot.kernels`)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc
        return
    trim(0)


def _native_session(path: Path, options: ort.SessionOptions) -> ort.InferenceSession | None:
    """A CPU session on ``path`` with its int8-cache attention on the native kernel, or None where
    the graph has none (or cannot be read: the plain load then says why), the kernel is not built
    here, or (with ``$CHATBOT_ATTENTION`` auto) the session fails on it, which is logged before
    ONNX Runtime's own attention serves instead."""
    library = kernels.attention_library()
    if library is None:
        return None
    try:
        graph = kernels.native_graph(path)
    except Exception:  # onnx raises DecodeError, OSError...: ONNX Runtime's own load says what is wrong
        return None
    if graph is None:
        return None
    options.register_custom_ops_library(str(library))
    options.add_session_config_entry(kernels.EXTERNAL_FOLDER, str(path.parent))
    try:
        session = ort.InferenceSession(graph, options, providers=[CPU])
    except Exception as error:
        if settings.attention() == "native":
            raise ModelFolderError(
                f"{path} cannot be loaded with the native attention: {error}",
                hint="CHATBOT_ATTENTION=onnxruntime serves it with ONNX Runtime's attention",
            ) from error
        log.warning("%s: the native attention failed to load (%s); ONNX Runtime's serves", path, error)
        return None
    # ONNX Runtime's Python session keeps the bytes it was made from, to make itself again should
    # its providers change (which a CPU session here never asks for; "bad as we're holding the
    # memory indefinitely", its own comment says): a graph's size for the session's lifetime,
    # +116 MB resident on GPT-2 124M's int8 graph. Let them go.
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None
    session.chatbot_attention = "native"
    log.info("%s: attention over its int8 cache on the native kernel (%s)", path, library.name)
    return session


WARM_CHUNK = 8 << 20  # bytes read at a time by warm_file


def warm_file(path: Path) -> int:
    """Read ``path`` through once, if it exists, so that its pages are in the page cache; the
    bytes read. ONNX Runtime maps the CPU graphs' embedding tables (``TABLES_FILE``) instead of
    loading them, and a prompt's first step then read each of its tokens' rows from the disk:
    a 128-token prompt's first step took 145 ms instead of 35 after the page cache was dropped
    (GPT-2 124M's int8 graph), where the tables inside the graph were read at load. The pages
    are the page cache's, shared by every process serving the folder, and count in a process's
    memory only as the rows it touches."""
    if not path.is_file():
        return 0
    buffer = bytearray(WARM_CHUNK)
    total = 0
    with path.open("rb", buffering=0) as file:
        while read := file.readinto(buffer):
            total += read
    return total


def _provider_names(providers: Sequence[str | tuple[str, dict[str, str]]]) -> list[str]:
    """The providers' names, without the options some come with."""
    return [p if isinstance(p, str) else p[0] for p in providers]


def _check_cuda(
    session: ort.InferenceSession, asked: Sequence[str | tuple[str, dict[str, str]]], path: Path
) -> None:
    """:class:`ChatbotError` when CUDA was asked for and the session runs without it.

    ONNX Runtime opens a CPU session when its CUDA provider cannot load (a CPU-only build, a
    CUDA or cuDNN it cannot find or that does not match its build) and only logs why; serving
    would then go on with the wrong buffers and fail later with an unrelated error.
    """
    if CUDA not in _provider_names(asked) or CUDA in session.get_providers():
        return
    try:
        build = f"onnxruntime-gpu {metadata.version('onnxruntime-gpu')}"
    except metadata.PackageNotFoundError:
        build = f"onnxruntime {ort.__version__}, a build without CUDA,"
    raise ChatbotError(
        f"CUDA was asked for, but ONNX Runtime could not load its CUDA provider and opened {path.name} "
        f"with {', '.join(session.get_providers())} only ({build} is installed)",
        hint="install the GPU build with `make install-gpu` (onnxruntime-gpu 1.31 needs CUDA 13 and cuDNN 9, "
        "as in deploy/Dockerfile.serve-gpu; outside that image call onnxruntime.preload_dlls() or put "
        "site-packages/nvidia/*/lib on LD_LIBRARY_PATH; ONNX Runtime's log above says what failed), "
        "or serve on the CPU with --device cpu",
    )


def cache_dtype(session: ort.InferenceSession, past_name: str) -> type[np.generic]:
    """The numpy type of a graph's KV cache, read from the type of its input ``past_name``: float32,
    float16 (the GPU's graph) or int8 (the CPU graphs' keys and values quantised per channel)."""
    past_type = next(i.type for i in session.get_inputs() if i.name == past_name)
    types: dict[str, type[np.generic]] = {"tensor(float16)": np.float16, "tensor(int8)": np.int8}
    return types.get(past_type, np.float32)


def choose_providers(device: str | None = None) -> list[str]:
    """Execution providers for ``device`` ("auto", "cpu", "cuda"; default ``$CHATBOT_DEVICE`` or auto)."""
    device = (device or settings.device()).lower()
    if device not in DEVICES:
        raise ChatbotError(f"unknown device {device!r}", hint=f"use one of {', '.join(DEVICES)}")
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise ChatbotError(
            "device 'cuda' was asked for, but this onnxruntime has no CUDAExecutionProvider",
            hint="install the GPU build with `pip install 'chatbot[gpu]'`, or use --device cpu",
        )
    if device == "cpu" or CUDA not in available:
        return [CPU]
    return [CUDA, CPU]


class OnnxGenerator:
    """Greedy or sampled generation over a model folder's ONNX export.

    >>> gen = OnnxGenerator(ModelFolder("models/current"))            # doctest: +SKIP
    >>> [t.id for t in gen.generate([5, 6, 7], GenerationConfig())]   # doctest: +SKIP

    The session is created once and is safe to use from many threads at once: every call to
    :meth:`generate` has its own I/O binding and its own cache.
    """

    def __init__(self, folder: ModelFolder, *, device: str | None = None, threads: int | None = None) -> None:
        self.session = open_session(
            folder.onnx_path,
            providers=choose_providers(device),
            threads=threads,
            hint=f"export it again with `chatbot export {folder.path}`",
        )
        self.spec = folder.spec
        self.stop_token_ids = folder.stop_token_ids
        self.device = "cuda" if self.session.get_providers()[0] == CUDA else "cpu"
        self._past_names, self._present_names = self._cache_names(folder)
        self._cache_dtype = cache_dtype(self.session, self._past_names[0])
        self._ones = np.ones((1, self.spec.n_positions), dtype=np.int64)  # attention mask source

    def _cache_names(self, folder: ModelFolder) -> tuple[list[str], list[str]]:
        inputs = {i.name for i in self.session.get_inputs()}
        past = [f"past_key_values.{i}.{kv}" for i in range(self.spec.n_layer) for kv in ("key", "value")]
        missing = [n for n in (*past, "input_ids", "attention_mask", "position_ids") if n not in inputs]
        if missing:
            raise ModelFolderError(
                f"{folder.onnx_path} is not a decoder with past key values (missing {missing[0]})",
                hint=f"export it again with `chatbot export {folder.path}`",
            )
        return past, [n.replace("past_key_values", "present") for n in past]

    def _ortvalue(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(array, self.device, 0)

    def generate(
        self,
        prompt_ids: Sequence[int],
        config: GenerationConfig,
        *,
        key: str | None = None,
        shared: int = 0,
    ) -> Iterator[Token]:
        """Yield the reply's tokens one by one (see :class:`Generator`; nothing is kept: ``key`` and
        ``shared`` are ignored)."""
        binding = self.session.io_binding()  # per call: concurrent replies never share one
        empty = np.zeros((1, self.spec.n_head, 0, self.spec.head_dim), dtype=self._cache_dtype)
        past = [self._ortvalue(empty)] * len(self._past_names)

        def step(ids: Sequence[int], start: int) -> np.ndarray:
            nonlocal past
            logits, past = self._step(binding, np.asarray([ids], dtype=np.int64), start, past)
            return logits

        return decode(
            step,
            prompt_ids,
            config,
            n_positions=self.spec.n_positions,
            vocab_size=self.spec.vocab_size,
            stop_token_ids=self.stop_token_ids,
        )

    def _step(
        self, binding: ort.IOBinding, ids: np.ndarray, start: int, past: list[ort.OrtValue]
    ) -> tuple[np.ndarray, list[ort.OrtValue]]:
        """Run one forward pass; return the last position's logits (vocab,) and the new cache."""
        end = start + ids.shape[1]
        positions = np.arange(start, end, dtype=np.int64)[None, :]
        binding.bind_ortvalue_input("input_ids", self._ortvalue(ids))
        binding.bind_ortvalue_input("position_ids", self._ortvalue(positions))
        binding.bind_ortvalue_input("attention_mask", self._ortvalue(self._ones[:, :end]))
        for name, value in zip(self._past_names, past, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.clear_binding_outputs()
        binding.bind_output("logits", "cpu")
        for name in self._present_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy()[0, -1].astype(np.float32, copy=False), present
