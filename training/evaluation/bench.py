"""`chatbot bench`: our ONNX engine against its peers on the same weights, in one process.

The model is a folder (``chatbot bench MODEL_DIR``) or a named shape with random weights
(``chatbot bench --config gpt2``, see :data:`CONFIGS`), built once in the cache and reused; speed
does not depend on the values of the weights, and the prompts are random token ids, never text.

The sides, each measured after a warm-up as medians of several runs on the same random prompt:

* ours: the engine's generator (:func:`_our_generator`); N conversations at once are N threads,
  each calling ``generator.generate``;
* CTranslate2 (when ``import ctranslate2`` works: ``pip install 'chatbot[bench]'``): the folder
  converted to int8 once (cached next to it); N conversations are one ``generate_batch``; CPU only;
* transformers ``generate`` (eager, fp32 on the CPU, fp16 on the GPU); N conversations are one
  batched call with N copies; on the GPU also ``generate(cache_implementation="static")``, which
  compiles its decode step with torch.compile (the fastest transformers route, GPU.md).

``device="cuda"`` runs every side on the GPU: ours on the ``cuda-fp16`` graph (built in the
folder when missing) through the scheduler with its CUDA graphs.

For each: time to first token (the prompt's forward pass and the first pick), decode
milliseconds per token at batch 1 (the rest of the reply, divided by its tokens), aggregate
tokens/s for each N of ``concurrency``, and the process's peak resident memory after that side
ran (the sides run one after the other in one process, so the figure is cumulative). Ours also:
the first token of a conversation's second turn with its first turn kept, and of a new
conversation whose system prompt earlier ones started with, each against the same prompt from
scratch (the CPU scheduler keeps both; see :mod:`chatbot.scheduler`). Everybody
generates greedily and exactly ``new_tokens`` tokens: stop tokens are ignored. The results are
printed as markdown tables with ratios against each peer (> 1× means ours is faster), and written
as ``bench.md`` and ``bench.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatbot import settings
from chatbot.errors import ChatbotError, ModelFolderError
from chatbot.folder import ModelFolder
from chatbot.generation import Generator
from chatbot.loader import REFERENCE, choose_variant, load_generator
from chatbot.paths import write_text_atomically
from chatbot.scheduler import BatchingGenerator
from chatbot.types import GenerationConfig, Progress
from chatbot.versions import model_folder

if TYPE_CHECKING:
    pass


BENCH_EXTRA = "pip install 'chatbot[bench]'"
CT2_QUANTIZATION = "int8"
FOLLOW_UP_TOKENS = 32  # the new message of the second turn that `chatbot bench` times
RECIPE = 6  # bump when a config folder must be built again (new files, new export options)


@dataclass(frozen=True)
class BenchConfig:
    """A named GPT-2 shape benchmarked with random weights (``chatbot bench --config NAME``)."""

    description: str
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    vocab_size: int  # config.json's, so the embedding and the LM head have the real size
    tokenizer_vocab: int = 512  # the tokenizer stays small: prompts are ids, never text
    parity_sequences: int = 2  # export_onnx's parity check, kept cheap for big shapes


CONFIGS: dict[str, BenchConfig] = {
    "gpt2": BenchConfig("GPT-2 124M shape, random weights", 12, 768, 12, 1024, 50257),
    "tiny": BenchConfig("a tiny GPT-2 with random weights, for tests", 2, 64, 4, 256, 1000),
}


@dataclass(frozen=True)
class BenchOptions:
    prompt_tokens: int = 128
    new_tokens: int = 64
    runs: int = 5
    concurrency: tuple[int, ...] = (1, 8, 32)
    out: Path = Path("bench")
    seed: int = 0
    concurrency_runs: int = 3  # each tokens/s figure is the median of this many runs
    device: str = "cpu"  # or "cuda"
    data: tuple[str, ...] = ()  # held-out transcripts to measure the variant's perplexity on


@dataclass
class Side:
    """One contender's figures (milliseconds, tokens/s, MiB)."""

    name: str
    first_token_ms: float
    decode_ms_per_token: float
    tokens: int
    peak_rss_mib: float
    tokens_per_s: dict[int, float] = field(default_factory=dict)
    # ours only: the first token of a conversation's second turn, with its first turn kept
    follow_up: dict[str, Any] = field(default_factory=dict)
    # ours only: the first token of a new conversation whose system prompt others had before
    shared_system: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# The run


def run_bench(
    model_dir: str | os.PathLike[str] | None,
    options: BenchOptions,
    progress: Progress = print,
    *,
    config: str | None = None,
) -> dict[str, Any]:
    """Benchmark a folder (or the named ``config``) against its peers; write and return the results."""
    if (model_dir is None) == (config is None):
        raise ChatbotError(
            "give either a model folder or a named config, not both or neither",
            hint=f"e.g. `chatbot bench models` or `chatbot bench --config gpt2` ({_config_names()})",
        )
    if config is not None:
        model_dir = ensure_bench_model(config, progress=progress)
    assert model_dir is not None
    if options.device == "cuda":
        _ensure_cuda_variant(Path(model_dir), progress)
    folder = model_folder(model_dir)
    prompt = _prompt(folder, options)
    progress(f"prompt {len(prompt)} random tokens, {options.new_tokens} new tokens, {options.runs} runs")
    ours = _measure_ours(folder, prompt, options, progress)
    peers: dict[str, Side | str] = {
        "ctranslate2": _ctranslate2_side(folder, prompt, ours.tokens, options, progress),
        "transformers": _measure_transformers(folder.path, prompt, ours.tokens, options, progress),
    }
    if options.device == "cuda":
        peers["transformers-static"] = _measure_transformers(
            folder.path, prompt, ours.tokens, options, progress, static=True
        )
    results = _results(folder, config, prompt, options, ours, peers)
    results["quality"] = _quality(folder, config, options, progress)
    results["speculative"] = _speculative(folder, prompt, options, progress)
    table = markdown(results)
    options.out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(options.out / "bench.json", json.dumps(results, indent=2) + "\n")
    write_text_atomically(options.out / "bench.md", table)
    progress(f"wrote {options.out / 'bench.md'} and {options.out / 'bench.json'}")
    return results


def _prompt(folder: ModelFolder, options: BenchOptions) -> list[int]:
    """Random token ids (never decoded), short enough to leave room for the reply."""
    spec = folder.spec
    length = max(1, min(options.prompt_tokens, spec.n_positions - options.new_tokens))
    rng = np.random.default_rng(options.seed)
    return [int(i) for i in rng.integers(0, spec.vocab_size, size=length)]


def _results(
    folder: ModelFolder,
    config: str | None,
    prompt: list[int],
    options: BenchOptions,
    ours: Side,
    peers: dict[str, Side | str],
) -> dict[str, Any]:
    results: dict[str, Any] = {
        "model": str(folder.path),
        "config": config,
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "device": options.device,
            "gpu": _gpu_name() if options.device == "cuda" else None,
        },
        "settings": {
            **asdict(options),
            "out": str(options.out),
            "prompt_tokens": len(prompt),
            "new_tokens": ours.tokens,
        },
        "ours": asdict(ours),
        "ratios": {},
    }
    for key, peer in peers.items():
        if isinstance(peer, str):
            results[key] = {"name": _PEER_NAMES[key], "missing": peer}
        else:
            results[key] = asdict(peer)
            results["ratios"][key] = _ratios(ours, peer)
    return results


def _quality(
    folder: ModelFolder, config: str | None, options: BenchOptions, progress: Progress
) -> dict[str, Any]:
    """What the speed costs in quality: the perplexity of the variant ours ran against the
    reference export's, measured on ``options.data`` when given, else as ``chatbot train``
    recorded it on its validation conversations (``card.json``); or why there is none."""
    variant = choose_variant(folder, options.device)
    if variant == REFERENCE:
        return {"variant": variant, "missing": "ours ran the reference export itself"}
    if options.data:
        return _measured_quality(folder, variant, options, progress)
    if config is not None:
        return {"variant": variant, "missing": "random weights: perplexity says nothing"}
    entry = folder.card.get("onnx", {}).get(variant, {})
    recorded = entry.get("perplexity") if isinstance(entry, dict) else None
    if not isinstance(recorded, dict) or not recorded.get("value") or not recorded.get("reference"):
        return {
            "variant": variant,
            "missing": "not recorded in card.json (`chatbot train` records it): "
            "pass --data HELD_OUT to measure it",
        }
    return {
        "variant": variant,
        "perplexity": recorded["value"],
        "reference": recorded["reference"],
        "change": recorded["value"] / recorded["reference"] - 1,
        "source": "card.json: measured by `chatbot train` on its validation conversations",
    }


def _measured_quality(
    folder: ModelFolder, variant: str, options: BenchOptions, progress: Progress
) -> dict[str, Any]:
    from training.evaluation.evaluate import reference_perplexity, variant_perplexity
    from training.transcripts.prepare import load_conversations

    data = load_conversations(options.data)
    progress(f"quality: perplexity of the reference export and of {variant} on {data.summary()}")
    reference = reference_perplexity(folder, data.transcripts)
    ours = variant_perplexity(folder, variant, data.transcripts, device=options.device)
    if ours.value is None or reference.value is None:
        return {"variant": variant, "missing": "no agent token of --data could be scored"}
    return {
        "variant": variant,
        "perplexity": ours.value,
        "reference": reference.value,
        "change": ours.value / reference.value - 1,
        "source": f"measured on {len(data.transcripts)} conversations of --data "
        f"({ours.learnt_tokens} agent tokens)",
    }


def _speculative(
    folder: ModelFolder, prompt: list[int], options: BenchOptions, progress: Progress
) -> dict[str, Any]:
    """Speculative decoding at batch 1, apart: on ``--data`` (real text) and on the random prompt."""
    from training.evaluation.speculative import held_out_prompts, measure_speculative

    if options.device != "cpu":
        return {}
    measure = partial(measure_speculative, folder, new_tokens=options.new_tokens, progress=progress)
    with _torch_off():
        found = {"random": measure([prompt], stop=False, rounds=options.runs)}
        if options.data:
            found["held_out"] = measure(held_out_prompts(folder, options.data), rounds=3)
    return found


def _speculative_lines(found: dict[str, Any]) -> list[str]:
    from training.evaluation.speculative import section

    sources = {"held_out": "--data, real text", "random": "the random prompt: random weights flatter drafts"}
    return [
        line for key, source in sources.items() if key in found for line in (section(found[key], source), "")
    ]


def _ratios(ours: Side, peer: Side) -> dict[str, Any]:
    """Peer / ours for times, ours / peer for tokens/s: above 1 means ours is faster."""
    return {
        "first_token": peer.first_token_ms / ours.first_token_ms,
        "decode": peer.decode_ms_per_token / ours.decode_ms_per_token,
        "tokens_per_s": {n: ours.tokens_per_s[n] / rate for n, rate in peer.tokens_per_s.items()},
    }


# ---------------------------------------------------------------------------------------------
# Named configs: a model folder with random weights, built once in the cache


def bench_model_dir(name: str) -> Path:
    """Where the named config's folder lives: ``~/.cache/chatbot/bench/NAME``."""
    return settings.cache_home() / "bench" / name


def ensure_bench_model(name: str, *, progress: Progress = print) -> Path:
    """The named config's model folder, built first (in a child process) when missing or incomplete."""
    config = _config(name)
    folder = bench_model_dir(name)
    if _is_complete(folder, name, config):
        progress(f"reusing {folder} ({config.description})")
        return folder
    progress(f"building {folder} ({config.description}); once, later runs reuse it")
    started = time.perf_counter()
    _in_child(_build_bench_model, name, folder, progress)
    progress(f"built {folder} in {time.perf_counter() - started:.0f} s")
    return folder


def _config_names() -> str:
    return ", ".join(CONFIGS)


def _config(name: str) -> BenchConfig:
    if name not in CONFIGS:
        raise ChatbotError(f"unknown bench config {name!r}", hint=f"use one of: {_config_names()}")
    return CONFIGS[name]


def _stamp(name: str, config: BenchConfig) -> dict[str, Any]:
    """What the card records about the build; a folder with another stamp is built again."""
    return {"config": name, "recipe": RECIPE, **asdict(config)}


def _is_complete(folder: Path, name: str, config: BenchConfig) -> bool:
    try:
        loaded = ModelFolder(folder)
    except ModelFolderError:
        return False
    return (folder / "model.safetensors").is_file() and loaded.card.get("bench") == _stamp(name, config)


def _build_bench_model(name: str, folder: Path, progress: Progress) -> None:
    """Build the folder in a staging folder beside it, then move it into place."""
    from training.card import set_card_entry
    from training.export.reference import export_onnx
    from training.fitting.tiny import move_into_place, write_random_folder

    config = _config(name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-build-", dir=folder.parent))
    try:
        progress(
            f"writing random weights ({config.n_layer} layers × {config.n_embd}, {config.vocab_size} tokens)"
        )
        sizes = {"n_layer": config.n_layer, "n_embd": config.n_embd, "n_head": config.n_head}
        write_random_folder(
            staging,
            seed=0,
            vocab_size=config.tokenizer_vocab,
            corpus=None,
            name=f"bench-{name}",
            sizes={**sizes, "n_positions": config.n_positions},
            model_vocab=config.vocab_size,
            shape=name,
            description=f"{config.description}, for `chatbot bench --config {name}`; replies are gibberish.",
        )
        progress("exporting to ONNX with a parity check against PyTorch")
        export_onnx(staging, sequences=config.parity_sequences, progress=progress)
        _build_fast_variants(staging, progress)
        set_card_entry(staging, ["bench"], _stamp(name, config))
        move_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _build_fast_variants(path: Path, progress: Progress) -> None:
    """Build the engine's fast variants (cpu-int8) of the exported folder at ``path``."""
    from training.export.fused_graph import build_variants

    build_variants(path, progress=progress)


def _ensure_cuda_variant(path: Path, progress: Progress) -> None:
    """Build the folder's cuda-fp16 graph (checked on the GPU) unless it has one."""
    from training.export.fused_graph import build_variant

    if "cuda-fp16" not in ModelFolder(path).variants:
        progress(f"building the cuda-fp16 graph of {path}; once, later runs reuse it")
        build_variant(path, "cuda-fp16", progress=progress)


def _gpu_name() -> str | None:
    with contextlib.suppress(Exception):
        import torch

        return str(torch.cuda.get_device_name(0))
    return None


def _in_child(function: Callable[..., Any], *args: Any) -> Any:
    """Run ``function(*args)`` in a fresh process: building and converting load torch and whole
    models, which would otherwise stay in this process's peak memory and threads."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


# ---------------------------------------------------------------------------------------------
# Ours


def _our_generator(folder: ModelFolder, device: str = "cpu") -> Generator:
    """The generator the engine serves with, stop tokens cleared so every reply runs its full length."""
    generator = load_generator(folder, device=device, max_batch=64)
    generator.stop_token_ids = ()
    if isinstance(generator, BatchingGenerator):  # plain decoding: drafts are measured apart (_speculative)
        generator.draft_tokens = 0
    return generator


def _measure_ours(folder: ModelFolder, prompt: list[int], options: BenchOptions, progress: Progress) -> Side:
    variant = choose_variant(folder, options.device)
    graph = folder.onnx_path if variant == REFERENCE else folder.variant_path(variant)
    progress(f"ours: {graph.relative_to(folder.path)} ({variant}) on ONNX Runtime, {options.device}")
    config = GenerationConfig(max_new_tokens=options.new_tokens)
    with _torch_off():
        generator = _our_generator(folder, options.device)

        def reply() -> Iterator[Any]:
            return iter(generator.generate(prompt, config))

        first, decode, tokens = _stream_timings(reply, options.runs)
        side = Side("ours (ONNX Runtime)", first, decode, tokens, 0.0)
        for n in options.concurrency:
            progress(f"ours: {n} conversations at once")
            side.tokens_per_s[n] = _median_rate(partial(_threaded, generator, prompt, config, n), options)
        side.peak_rss_mib = _peak_rss_mib()
        # last: its longer prompts grow the cache, which the figures above must not pay for
        progress("ours: a conversation's second turn, and new ones with the same system prompt")
        side.follow_up, side.shared_system = _kept_turns(generator, folder, prompt, config, options)
    return side


def _kept_turns(
    generator: Generator,
    folder: ModelFolder,
    prompt: list[int],
    config: GenerationConfig,
    options: BenchOptions,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """First tokens with keys and values kept, and from scratch (medians):

    * a second turn (the first prompt, its reply, then ``FOLLOW_UP_TOKENS`` new tokens) with the
      first turn kept;
    * new conversations whose system prompt is ``prompt``, followed by ``FOLLOW_UP_TOKENS``
      tokens of their own, with the system prompt kept from the conversations before them.
    """
    rng = np.random.default_rng(options.seed + 1)
    spec = folder.spec
    window = spec.n_positions - 1
    new = [int(i) for i in rng.integers(0, spec.vocab_size, FOLLOW_UP_TOKENS)]

    def second_turn(key: str) -> tuple[list[int], int]:
        reply = [token.id for token in generator.generate(prompt, config, key=key)]
        return [*prompt, *reply, *new][:window], 0

    def first_turn(key: str) -> tuple[list[int], int]:
        message = [int(i) for i in rng.integers(0, spec.vocab_size, FOLLOW_UP_TOKENS)]
        return [*prompt, *message][:window], len(prompt)

    follow_up = _kept_against_scratch(generator, config, options, "bench-follow-up", second_turn)
    shared = _kept_against_scratch(generator, config, options, "bench-system", first_turn)
    return follow_up, {**shared, "system_tokens": len(prompt)}


def _kept_against_scratch(
    generator: Generator,
    config: GenerationConfig,
    options: BenchOptions,
    name: str,
    make: Callable[[str], tuple[list[int], int]],
) -> dict[str, Any]:
    """Median first-token times of ``make(key)``'s prompt (and its shared leading tokens) under
    the conversation ``key`` and from scratch; the first of ``options.runs + 1`` is a warm-up."""
    kept, scratch = [], []
    prompt: list[int] = []
    reused = 0
    for run in range(options.runs + 1):
        key = f"{name}-{run}"
        prompt, shared = make(key)
        before = getattr(generator, "reused_tokens", 0)
        with_kept = _first_token_s(generator, generator.generate(prompt, config, key=key, shared=shared))
        reused = getattr(generator, "reused_tokens", 0) - before
        from_scratch = _first_token_s(generator, generator.generate(prompt, config))
        if run:
            kept.append(with_kept)
            scratch.append(from_scratch)
    return {
        "prompt_tokens": len(prompt),
        "kept_tokens": reused,
        "first_token_ms": statistics.median(kept) * 1e3,
        "scratch_first_token_ms": statistics.median(scratch) * 1e3,
    }


def _first_token_s(generator: Generator, tokens: Iterator[Any]) -> float:
    """Seconds until ``tokens`` yields its first; the rest is not generated (the reader leaves,
    and the scheduler is let go idle before the next measurement)."""
    started = time.perf_counter()
    next(iter(tokens), None)
    elapsed = time.perf_counter() - started
    close = getattr(tokens, "close", None)
    if close is not None:
        close()
    busy = getattr(generator, "batch_size", None)
    deadline = time.monotonic() + 10
    while busy is not None and busy() and time.monotonic() < deadline:
        time.sleep(0.001)
    return elapsed


def _threaded(generator: Generator, prompt: list[int], config: GenerationConfig, n: int) -> tuple[int, float]:
    """(tokens, seconds) of ``n`` replies generated at once, one thread each."""
    counts = [0] * n

    def reply(index: int) -> None:
        counts[index] = sum(1 for _ in generator.generate(prompt, config))

    threads = [threading.Thread(target=reply, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts), time.perf_counter() - started


@contextlib.contextmanager
def _torch_off() -> Iterator[None]:
    """One torch thread while another runtime runs, when torch is loaded at all: its idle OpenMP
    threads would otherwise spin on the same cores (see CPU.md's thread fight)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Shared timing


def _stream_timings(start: Callable[[], Iterator[Any]], runs: int) -> tuple[float, float, int]:
    """(first token ms, decode ms/token, tokens): medians over ``runs`` streams after a warm-up."""
    _timed_stream(start)
    timings = [_timed_stream(start) for _ in range(runs)]
    first = statistics.median(f for f, _, _ in timings)
    decode = statistics.median((total - f) / max(1, count - 1) for f, total, count in timings)
    return first * 1e3, decode * 1e3, min(count for _, _, count in timings)


def _timed_stream(start: Callable[[], Iterator[Any]]) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = 0.0
    count = 0
    for _ in start():
        count += 1
        if count == 1:
            first = time.perf_counter() - started
    return first, time.perf_counter() - started, count


def _median_rate(measure: Callable[[], tuple[int, float]], options: BenchOptions) -> float:
    """Median tokens/s of ``measure() -> (tokens, seconds)`` over the options' concurrency runs."""
    rates = []
    for _ in range(options.concurrency_runs):
        tokens, seconds = measure()
        rates.append(tokens / seconds)
    return statistics.median(rates)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------
# CTranslate2


_PEER_NAMES = {
    "ctranslate2": "CTranslate2",
    "transformers": "transformers generate (eager)",
    "transformers-static": "transformers generate (static cache, torch.compile)",
}


def _ctranslate2_side(
    folder: ModelFolder, prompt: list[int], tokens: int, options: BenchOptions, progress: Progress
) -> Side | str:
    """CTranslate2's figures, or why there are none."""
    if options.device != "cpu":
        return "measured on the CPU only"
    try:
        import ctranslate2
    except ImportError:
        return f"not installed ({BENCH_EXTRA})"
    try:
        converted = _ctranslate2_model(folder.path, progress)
    except Exception as error:  # the converter raises many unrelated types
        return f"conversion failed ({type(error).__name__}: {error})"
    progress(f"CTranslate2 {ctranslate2.__version__} ({CT2_QUANTIZATION}) on {converted.name}")
    with _torch_off():
        side = _measure_ctranslate2(ctranslate2, converted, prompt, tokens, options, progress)
    side.peak_rss_mib = _peak_rss_mib()
    return side


def _ctranslate2_model(folder: Path, progress: Progress) -> Path:
    """The folder converted for CTranslate2 (int8), cached beside it and keyed by its files."""
    converted = folder.parent / f".{folder.name}.ctranslate2-{CT2_QUANTIZATION}-{_fingerprint(folder)}"
    if (converted / "model.bin").is_file():
        return converted
    for old in folder.parent.glob(f".{folder.name}.ctranslate2-*"):
        shutil.rmtree(old, ignore_errors=True)  # conversions of an earlier state of the folder
    progress(f"converting {folder} for CTranslate2 ({CT2_QUANTIZATION}); once, later runs reuse it")
    _in_child(_convert, folder, converted)
    return converted


def _fingerprint(folder: Path) -> str:
    """A short key that changes when the weights, config or tokenizer change, or CTranslate2 does."""
    digest = hashlib.sha256(metadata.version("ctranslate2").encode())
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        stat = (folder / name).stat()
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:12]


def _convert(folder: Path, converted: Path) -> None:
    """Convert in a staging folder beside ``converted``, then move it into place."""
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_tokenizer(self, tokenizer_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
            """The tokenizer padded to the model's vocabulary: CTranslate2 wants one string per id,
            and a bench config's tokenizer is smaller than its embedding."""
            tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            vocab_size = json.loads((folder / "config.json").read_text())["vocab_size"]
            tokenizer.add_tokens([f"<bench-{i}>" for i in range(len(tokenizer), vocab_size)])
            return tokenizer

    staging = Path(tempfile.mkdtemp(prefix=f"{converted.name}-", dir=converted.parent))
    try:
        Converter(str(folder)).convert(str(staging), quantization=CT2_QUANTIZATION, force=True)
        os.replace(staging, converted)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _measure_ctranslate2(
    ctranslate2: Any,
    converted: Path,
    prompt: list[int],
    tokens: int,
    options: BenchOptions,
    progress: Progress,
) -> Side:
    generator = ctranslate2.Generator(
        str(converted), device="cpu", compute_type=CT2_QUANTIZATION, intra_threads=_cpus()
    )
    vocabulary = json.loads((converted / "vocabulary.json").read_text(encoding="utf-8"))
    start = [vocabulary[i] for i in prompt]

    def reply() -> Iterator[Any]:
        return iter(generator.generate_tokens(start, max_length=tokens, min_length=tokens))

    def batch(n: int) -> tuple[int, float]:
        started = time.perf_counter()
        results = generator.generate_batch(
            [start] * n, max_length=tokens, min_length=tokens, include_prompt_in_result=False
        )
        return sum(len(r.sequences_ids[0]) for r in results), time.perf_counter() - started

    first, decode, count = _stream_timings(reply, options.runs)
    side = Side(f"CTranslate2 {ctranslate2.__version__} ({CT2_QUANTIZATION})", first, decode, count, 0.0)
    for n in options.concurrency:
        progress(f"CTranslate2: {n} conversations in one batch")
        side.tokens_per_s[n] = _median_rate(partial(batch, n), options)
    return side


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# transformers


def _measure_transformers(
    path: Path,
    prompt: list[int],
    tokens: int,
    options: BenchOptions,
    progress: Progress,
    *,
    static: bool = False,
) -> Side:
    import torch
    from transformers import AutoModelForCausalLM

    gpu = options.device == "cuda"
    dtype = torch.float16 if gpu else torch.float32
    name = f"{_PEER_NAMES['transformers-static' if static else 'transformers']}, {str(dtype).split('.')[-1]}"
    progress(f"{name} on the same weights")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval().to(options.device)
    ids = torch.tensor([prompt], device=options.device)
    extra = {"cache_implementation": "static"} if static else {}

    def generate(count: int, n: int = 1) -> tuple[int, float]:
        batch = ids.repeat(n, 1)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                do_sample=False,
                max_new_tokens=count,
                min_new_tokens=count,
                pad_token_id=model.config.eos_token_id or 0,
                **extra,
            )
        if gpu:
            torch.cuda.synchronize()
        return (out.shape[1] - ids.shape[1]) * n, time.perf_counter() - started

    generate(tokens)  # warm-up (with a static cache: compiles; each batch size once more below)
    first = statistics.median(generate(1)[1] for _ in range(options.runs))
    total = statistics.median(generate(tokens)[1] for _ in range(options.runs))
    decode = (total - first) / max(1, tokens - 1)
    side = Side(name, first * 1e3, decode * 1e3, tokens, 0.0)
    for n in options.concurrency:
        progress(f"{name}: {n} conversations in one batch")
        if static:
            generate(tokens, n)  # a new batch size compiles again: not timed
        side.tokens_per_s[n] = _median_rate(partial(generate, tokens, n), options)
    side.peak_rss_mib = _peak_rss_mib()
    return side


# ---------------------------------------------------------------------------------------------
# The tables


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables (what `chatbot bench` prints)."""
    settings, machine = results["settings"], results["machine"]
    config = f" (`--config {results['config']}`)" if results.get("config") else ""
    where = f"GPU ({machine['gpu']})" if machine.get("device") == "cuda" else "CPU"
    lines = [
        f"# chatbot bench: {results['model']}{config}",
        "",
        f"Prompt {settings['prompt_tokens']} random tokens, {settings['new_tokens']} new tokens (greedy), "
        f"{where}, {machine['cpus']} CPUs; medians of {settings['runs']} runs after a warm-up "
        f"(tokens/s: of {settings['concurrency_runs']} runs). Ratios above 1× mean ours is faster. "
        "The sides run one after another in one process, so each peak RSS is the process's so far.",
        "",
        *_batch_one_table(results),
        "",
        *_concurrency_table(results),
        "",
        _follow_up_line(results["ours"].get("follow_up") or {}),
        "",
        _shared_system_line(results["ours"].get("shared_system") or {}),
        "",
        _quality_line(results.get("quality")),
        "",
        *_speculative_lines(results.get("speculative") or {}),
    ]
    return "\n".join(lines)


def _follow_up_line(follow_up: dict[str, Any]) -> str:
    if not follow_up:
        return "A conversation's second turn: not measured."
    kept, scratch = follow_up["first_token_ms"], follow_up["scratch_first_token_ms"]
    if not follow_up["kept_tokens"]:
        return (
            f"A conversation's second turn ({follow_up['prompt_tokens']} tokens): first token in "
            f"{kept:.2f} ms; nothing of the first turn is kept on this path (the CPU scheduler keeps it)."
        )
    return (
        f"A conversation's second turn ({follow_up['prompt_tokens']} tokens: the first prompt, its "
        f"reply and {FOLLOW_UP_TOKENS} new tokens): first token in {kept:.2f} ms with the first turn's "
        f"keys and values kept ({follow_up['kept_tokens']} tokens not prefilled), {scratch:.2f} ms "
        f"from scratch ({scratch / kept:.2f}×)."
    )


def _shared_system_line(shared: dict[str, Any]) -> str:
    if not shared:
        return "A new conversation with a system prompt others had: not measured."
    kept, scratch = shared["first_token_ms"], shared["scratch_first_token_ms"]
    what = (
        f"A new conversation's first turn ({shared['prompt_tokens']} tokens: a "
        f"{shared['system_tokens']}-token system prompt, the bench's prompt, that earlier conversations "
        f"started with, and {FOLLOW_UP_TOKENS} tokens of its own): first token in {kept:.2f} ms"
    )
    if not shared["kept_tokens"]:
        return f"{what}; nothing is shared between conversations on this path (the CPU scheduler shares it)."
    return (
        f"{what} with the system prompt's keys and values kept ({shared['kept_tokens']} tokens not "
        f"prefilled), {scratch:.2f} ms from scratch ({scratch / kept:.2f}×)."
    )


def _quality_line(quality: dict[str, Any] | None) -> str:
    if not quality:
        return "Quality: not measured."
    variant = quality["variant"]
    if "missing" in quality:
        return f"Quality of `{variant}`: {quality['missing']}."
    return (
        f"Quality: perplexity of `{variant}` {quality['perplexity']:.4f} against "
        f"{quality['reference']:.4f} for the reference export ({quality['change']:+.2%}); "
        f"{quality['source']}."
    )


def _sides(results: dict[str, Any]) -> list[str]:
    """The keys of the sides in the results: ours first, then the peers in the order they ran."""
    return ["ours", *(key for key in _PEER_NAMES if key in results)]


def _batch_one_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| batch 1 | time to first token (ms) | decode (ms/token) | peak RSS of the process (MiB) |",
        "|---|---:|---:|---:|",
    ]
    ran: list[str] = []
    for key in _sides(results):
        side = results[key]
        if "missing" in side:
            lines.append(f"| {side['name']} | {side['missing']} | | |")
            continue
        ran.append(key)
        lines.append(
            f"| {side['name']} | {side['first_token_ms']:.2f} | {side['decode_ms_per_token']:.2f} "
            f"| {side['peak_rss_mib']:.0f} (after {', '.join(ran)}) |"
        )
    for key, ratio in results["ratios"].items():
        lines.append(
            f"| {results[key]['name']} / ours | {ratio['first_token']:.2f}× | {ratio['decode']:.2f}× | |"
        )
    return lines


def _concurrency_table(results: dict[str, Any]) -> list[str]:
    peers = _sides(results)[1:]
    names = [results[key]["name"] for key in peers]
    lines = [
        "| conversations at once | ours, one thread each through the scheduler (tokens/s) | "
        + " | ".join(f"{name}, one batch (tokens/s)" for name in names)
        + " | "
        + " | ".join(f"ours / {key}" for key in peers)
        + " |",
        "|---:|---:|" + "---:|" * (2 * len(peers)),
    ]
    for n, rate in results["ours"]["tokens_per_s"].items():
        rates = [_cell(results[key].get("tokens_per_s", {}), n, "{:.0f}") for key in peers]
        ratios = [
            _cell(results["ratios"].get(key, {}).get("tokens_per_s", {}), n, "{:.2f}×") for key in peers
        ]
        lines.append(f"| {n} | {rate:.0f} | {' | '.join(rates)} | {' | '.join(ratios)} |")
    return lines


def _cell(values: dict[Any, float], n: Any, form: str) -> str:
    value = values.get(n)
    return "–" if value is None else form.format(value)
