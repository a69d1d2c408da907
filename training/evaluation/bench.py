"""`chatbot bench`: our ONNX engine against its peers on the same weights, in one process.

The model is a folder (``chatbot bench MODEL_DIR``) or a named shape with random weights
(``chatbot bench --config gpt2``, see :data:`CONFIGS`), built once in the cache and reused; speed
does not depend on the values of the weights, and the prompts are random token ids, never text.

The sides, all loaded and warmed up first, then timed in interleaved rounds
(:mod:`training.evaluation.rounds`): each round times one reply of every side in turn, so a
slow minute of a shared machine slows them all, and each round's ratio is paired.

* ours: the engine's generator (:func:`_our_generator`) on each graph of the folder that runs on
  the device: the one it serves (``ours``) and the others (e.g. ``cpu-fp32``, or a ``cpu-int4``
  when there is one) at batch 1; N conversations at once are N threads, each calling
  ``generator.generate``;
* CTranslate2 (when ``import ctranslate2`` works: ``pip install 'chatbot[bench]'``): the folder
  converted to int8 once (cached next to it); N conversations are one ``generate_batch``; CPU only;
* transformers ``generate`` (eager, fp32 on the CPU, fp16 on the GPU), timed through a streamer
  so its first token is timed as the others' are; N conversations are one batched call with N
  copies; on the GPU also ``generate(cache_implementation="static")``, which compiles its decode
  step with torch.compile (the fastest transformers route, GPU.md).

``device="cuda"`` runs every side on the GPU: ours on the ``cuda-fp16`` graph (built in the
folder when missing) through the scheduler with its CUDA graphs.

For each: time to first token (the prompt's forward pass and the first pick), decode
milliseconds per token at batch 1 (the rest of the reply, divided by its tokens), medians of the
rounds with their spread, aggregate tokens/s for each N of ``concurrency`` (interleaved the same
way), and the process's peak resident memory once that side was loaded and warm (cumulative).
Before any side loads, the machine's own limits are measured in the same run
(:mod:`training.evaluation.machine`: CPU model and flags, load average, read bandwidth, GEMM
throughput at the prompt's shapes), and each of our graphs is held against its floors
(:mod:`training.evaluation.floors`): bytes read per decoded token / bandwidth, and the prefill's
matrix products / GEMM throughput. Ours also: the first token of a conversation's second turn
with its first turn kept, and of a new conversation whose system prompt earlier ones started
with, each against the same prompt from scratch (the CPU scheduler keeps both; see
:mod:`chatbot.scheduler`). Everybody generates greedily and exactly ``new_tokens`` tokens: stop
tokens are ignored. The results are printed as markdown tables with ratios against each peer
(> 1× means ours is faster), and written as ``bench.md`` and ``bench.json``.
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
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from chatbot import settings
from chatbot.errors import ChatbotError, ModelFolderError
from chatbot.folder import GRAPH_FORMAT, ModelFolder
from chatbot.generation import Generator
from chatbot.loader import REFERENCE, choose_variant, load_generator
from chatbot.paths import write_text_atomically
from chatbot.scheduler import BatchingGenerator
from chatbot.types import GenerationConfig, Progress
from chatbot.versions import model_folder
from training.evaluation import machine as limits
from training.evaluation.bench_report import issue_targets, markdown
from training.evaluation.floors import prefill_gemms, variant_floors
from training.evaluation.rounds import (
    Contender,
    figures,
    iqr,
    paired_against_base,
    paired_ratios,
    quiet_torch,
    run_batch_rounds,
    run_rounds,
    timed_stream,
)
from training.evaluation.step_bound import served_step_bound

BENCH_EXTRA = "pip install 'chatbot[bench]'"
CT2_QUANTIZATION = "int8"
FOLLOW_UP_TOKENS = 32  # the new message of the second turn that `chatbot bench` times
SCALING_TARGET = 4.0  # issue 21: 32 conversations at once should give at least 4× one's tokens/s
RECIPE = 12  # bump when a config folder must be built again (new files, new export options)


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
    facts = _machine(folder, len(prompt), options, progress)
    progress(f"prompt {len(prompt)} random tokens, {options.new_tokens} new tokens, {options.runs} rounds")
    sides = _Sides(folder, prompt, options, progress)
    if options.device == "cpu":  # the floor of each round's own bandwidth (machine.BandwidthProbe)
        with limits.BandwidthProbe(_cpus()) as probe:
            facts["round_bandwidth_gbs"] = run_rounds(sides.contenders, options.runs, progress, probe)
    else:
        run_rounds(sides.contenders, options.runs, progress)
    run_batch_rounds(sides.contenders, options.concurrency, options.concurrency_runs, progress)
    bound = _step_bound(folder, prompt, options, sides, progress)
    if options.device == "cpu":
        progress("machine: read bandwidth and GEMM throughput again, at the end")
        _best_limits(facts, _in_child(_machine_limits, folder.path, len(prompt), _cpus()))
    # last: its longer prompts grow the cache, which the figures above must not pay for
    progress("ours: a conversation's second turn, and new ones with the same system prompt")
    with quiet_torch():
        kept = _kept_turns(sides.generator, folder, prompt, sides.config, options)
    results = _results(folder, config, prompt, options, facts, sides, kept)
    results["ours"]["scaling"]["graph"] = bound
    results["quality"] = _quality(folder, config, options, progress)
    results["speculative"] = _speculative(folder, prompt, options, progress)
    results["targets"] = issue_targets(results)
    table = markdown(results)
    options.out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(options.out / "bench.json", json.dumps(results, indent=2) + "\n")
    write_text_atomically(options.out / "bench.md", table)
    progress(f"wrote {options.out / 'bench.md'} and {options.out / 'bench.json'}")
    return results


def _machine(
    folder: ModelFolder, prompt_tokens: int, options: BenchOptions, progress: Progress
) -> dict[str, Any]:
    """The machine, its load before the bench loads anything, and (on the CPU) its own limits."""
    cpu = limits.cpu()
    threads = _cpus()
    facts: dict[str, Any] = {
        "load_average_start": limits.load_average(),
        "cpu": cpu["model"],
        "cpu_flags": cpu["flags"],
        "cpu_lacks": cpu["lacks"],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "device": options.device,
        "gpu": _gpu_name() if options.device == "cuda" else None,
    }
    if options.device != "cpu":
        facts["limits_missing"] = "the machine's limits and the floors are measured for the CPU only"
        return facts
    progress(f"machine: {cpu['model']}; read bandwidth and GEMM throughput with {threads} threads")
    start = _in_child(_machine_limits, folder.path, prompt_tokens, threads)
    facts["limits"] = {"start": start}
    facts["read_bandwidth_how"] = limits.bandwidth_how(threads)
    facts["gemm_how"] = (
        f"ONNX Runtime MatMulInteger (uint8 × int8) and MatMul (fp32), {threads} threads, the weight an "
        f"initializer; fastest of {limits.GEMM_RUNS} runs at the start and at the end of the run; the "
        "figures above are at the MLP's first product, (prompt × hidden) · (hidden × 4·hidden)"
    )
    return facts


def _machine_limits(path: Path, prompt_tokens: int, threads: int) -> dict[str, Any]:
    """Read bandwidth and GEMM throughput at the prefill's shapes; run in a child process, so its
    1 GiB buffer and weights stay out of the bench's peak memory and its threads out of the way."""
    return {
        "read_bandwidth": limits.read_bandwidth(threads),
        "gemm": limits.gemm_throughput(prefill_gemms(ModelFolder(path), prompt_tokens), threads),
    }


def _best_limits(facts: dict[str, Any], end: dict[str, Any]) -> None:
    """Add the end's measurement to ``facts`` and keep the best of start and end: what the machine
    did when it was least disturbed is what the floors hold our figures against."""
    facts["limits"]["end"] = end
    measured = facts["limits"].values()
    facts["read_bandwidth"] = {when: m["read_bandwidth"] for when, m in facts["limits"].items()}
    facts["read_bandwidth_gbs"] = max(max(m["read_bandwidth"].values()) for m in measured)
    facts["gemm"] = {
        precision: {
            name: min((m["gemm"][precision][name] for m in measured), key=lambda g: g["ms"])
            for name in shapes
        }
        for precision, shapes in end["gemm"].items()
    }
    facts["gemm_int8_gops"] = facts["gemm"]["int8"]["mlp_in"]["gops"]
    facts["gemm_fp32_gflops"] = facts["gemm"]["fp32"]["mlp_in"]["gops"]


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
    facts: dict[str, Any],
    sides: _Sides,
    kept: tuple[dict[str, Any], dict[str, Any]],
) -> dict[str, Any]:
    ours = sides.contenders[0]
    results: dict[str, Any] = {
        "model": str(folder.path),
        "config": config,
        "machine": facts,
        "settings": {
            **asdict(options),
            "out": str(options.out),
            "prompt_tokens": len(prompt),
            "new_tokens": min(ours.counts),
        },
        "load_order": [c.key for c in sides.contenders],
        "ours": {
            **_side(ours, sides.contenders),
            "variant": ours.variant,
            "scaling": _scaling(ours),
            "follow_up": kept[0],
            "shared_system": kept[1],
        },
        "ratios": {},
        "variants": {},
        "peak_rss_mib_end": _peak_rss_mib(),
    }
    for contender in sides.contenders:
        if contender.variant is not None:
            results["variants"][contender.variant] = _variant(folder, contender, ours, sides, facts, options)
    for key in _PEER_NAMES:
        peer = next((c for c in sides.contenders if c.key == key), None)
        if peer is not None:
            results[key] = _side(peer, sides.contenders)
            results["ratios"][key] = paired_ratios(ours, peer)
        elif key in sides.missing:
            results[key] = {"name": _PEER_NAMES[key], "missing": sides.missing[key]}
    return results


def _side(contender: Contender, order: list[Contender]) -> dict[str, Any]:
    loaded = [c.key for c in order[: order.index(contender) + 1]]
    return {
        "name": contender.name,
        **figures(contender),
        "peak_rss_mib": contender.peak_rss_mib,
        "peak_rss_after": loaded,
    }


def _step_bound(
    folder: ModelFolder, prompt: list[int], options: BenchOptions, sides: _Sides, progress: Progress
) -> dict[str, Any]:
    """What the served graph allows N conversations (:mod:`training.evaluation.step_bound`), timed
    in a child process (its own sessions and cache); or why it was not measured."""
    ours = sides.contenders[0]
    if options.device != "cpu" or ours.variant is None or not ours.rates:
        return {"missing": "measured for our CPU graphs with several conversations at once only"}
    rows = sorted(ours.rates)
    progress(f"ours: a prefill and decode steps of {', '.join(map(str, rows))} rows, bare (the bound)")
    return dict(_in_child(served_step_bound, folder.path, ours.variant, prompt, options.new_tokens, rows))


def _scaling(ours: Contender) -> dict[str, Any]:
    """Ours' tokens/s with N conversations at once against one, paired round by round (issue 21's
    target: 32 at 4× one)."""
    if not ours.rates:
        return {}
    return {**paired_against_base(ours.rates), "target": SCALING_TARGET}


def _variant(
    folder: ModelFolder,
    contender: Contender,
    ours: Contender,
    sides: _Sides,
    facts: dict[str, Any],
    options: BenchOptions,
) -> dict[str, Any]:
    """A graph of ours: its figures, what it reads per token, its floors, and how far above them it runs."""
    assert contender.variant is not None
    graph = _graph_path(folder, contender.variant)
    measured = figures(contender)
    entry: dict[str, Any] = {
        "name": contender.name,
        "graph": str(graph.relative_to(folder.path)),
        "served": contender is ours,
        "attention": contender.attention,
        "first_token_ms": measured["first_token_ms"],
        "decode_ms_per_token": measured["decode_ms_per_token"],
        "spread": measured["spread"],
        "peak_rss_mib": contender.peak_rss_mib,
        "peak_rss_after": _side(contender, sides.contenders)["peak_rss_after"],
    }
    if contender is not ours:
        entry["vs_ours"] = paired_ratios(ours, contender)
    if "read_bandwidth_gbs" not in facts:
        entry["floors_missing"] = facts.get("limits_missing", "the machine's limits were not measured")
        return entry
    card_entry = (folder.card.get("onnx") or {}).get(contender.variant)
    precision = card_entry.get("precision") if isinstance(card_entry, dict) else None
    floors = variant_floors(
        folder,
        graph,
        prompt_tokens=len(sides.prompt),
        new_tokens=min(contender.counts),
        bandwidth_gbs=facts["read_bandwidth_gbs"],
        gemm=facts["gemm"],
        precision=precision if isinstance(precision, str) else None,
    )
    entry.update(floors)
    entry["decode_vs_floor"] = entry["decode_ms_per_token"] / floors["decode_floor_ms"]
    rounds = contender.bandwidths  # measured around each of its replies (run_rounds)
    if rounds and len(rounds) == len(contender.decodes):  # each decode over its own second's floor
        bytes_per_token = floors["bytes_per_token"]
        paired = [d * gbs * 1e9 / bytes_per_token for d, gbs in zip(contender.decodes, rounds, strict=True)]
        entry["round_bandwidth_gbs"] = rounds
        entry["decode_vs_round_floor"] = statistics.median(paired)
        entry["decode_vs_round_floor_iqr"] = iqr(paired)
    first_floor = floors["first_token_floor_ms"]
    entry["first_token_vs_floor"] = None if first_floor is None else entry["first_token_ms"] / first_floor
    return entry


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


SPECULATIVE_SECONDS_A_RUN = 2.0  # each --runs asks the drafting measure for 2 s more of rounds


def _speculative(
    folder: ModelFolder, prompt: list[int], options: BenchOptions, progress: Progress
) -> dict[str, Any]:
    """Speculative decoding at batch 1, apart: on ``--data`` (real text) and on the random prompt;
    and on ``--data``, greedy replies at once drafting together."""
    from training.evaluation.speculative import held_out_prompts, measure_speculative, measure_together

    if options.device != "cpu":
        return {}
    measure = partial(
        measure_speculative,
        folder,
        new_tokens=options.new_tokens,
        min_seconds=SPECULATIVE_SECONDS_A_RUN * options.runs,  # small models: more of their short rounds
        progress=progress,
    )
    with quiet_torch():
        found = {"random": measure([prompt], stop=False, rounds=options.runs)}
        if options.data:
            prompts = held_out_prompts(folder, options.data)
            found["held_out"] = measure(prompts, rounds=max(3, options.runs))
            found["held_out_together"] = measure_together(
                folder,
                prompts,
                new_tokens=options.new_tokens,
                rounds=max(3, options.runs),
                min_seconds=SPECULATIVE_SECONDS_A_RUN * options.runs,
                progress=progress,
            )
    return found


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
        _add_missing_variants(folder, progress)
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
    """Build the engine's fast CPU variants of the exported folder at ``path``: ``cpu-int8``, which
    serves random weights, must build; any other (``cpu-int4``, ``cpu-fp32``, and whatever the
    graph builder learns next) is timed and held against its floors when it builds, and left out
    when it does not. On random weights int4's greedy picks agree with the reference's by luck
    around its 30 % bound (36 % in one build of the GPT-2 shape, 28 % in another of the same
    weights), which must not stop the bench from timing the rest."""
    from training.export.fused_graph import build_variant, build_variants
    from training.export.kv_cache import recorded_scales

    build_variants(path, ("cpu-int8",), progress=progress)
    scales = recorded_scales(path, "cpu-int8")  # the others share its cache: not calibrated again
    for variant in _cpu_variants():
        if variant != "cpu-int8":
            build = partial(build_variant, path, variant, progress=progress, kv_scales=scales)
            _try_variant(path, variant, build, progress)


def _add_missing_variants(folder: Path, progress: Progress) -> None:
    """Build the CPU variants a config folder lacks (it was built by an earlier chatbot), except
    those that failed with this graph format before (``card.json``'s ``bench_unbuilt``)."""
    from training.export.fused_graph import build_variant

    loaded = ModelFolder(folder)
    unbuilt = loaded.card.get("bench_unbuilt") or {}
    for variant in _cpu_variants():
        failed = unbuilt.get(variant) if isinstance(unbuilt, dict) else None
        if variant in loaded.variants or (isinstance(failed, dict) and failed.get("format") == GRAPH_FORMAT):
            continue
        progress(f"building the {variant} graph of {folder}; once, later runs reuse it")
        _try_variant(folder, variant, partial(_in_child, build_variant, folder, variant), progress)


def _cpu_variants() -> list[str]:
    from training.export.fused_graph import VARIANTS

    return [name for name, precision in VARIANTS.items() if getattr(precision, "device", "") == "cpu"]


def _try_variant(folder: Path, variant: str, build: Callable[[], Any], progress: Progress) -> None:
    """``build()``; a failure (a variant failing its parity check on random weights, say) is said,
    and recorded in the card so that later runs do not try again until the graph format changes."""
    from training.card import set_card_entry

    try:
        build()
    except Exception as error:  # whatever it is, the bench goes on without that graph
        reason = f"{type(error).__name__}: {error}"
        progress(f"the {variant} graph was not built ({reason}); timed without it")
        set_card_entry(folder, ["bench_unbuilt", variant], {"error": reason, "format": GRAPH_FORMAT})


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


def _our_generator(folder: ModelFolder, device: str = "cpu", variant: str | None = None) -> Generator:
    """The generator the engine serves with, stop tokens cleared so every reply runs its full length."""
    generator = load_generator(folder, device=device, variant=variant, max_batch=64)
    generator.stop_token_ids = ()
    if isinstance(generator, BatchingGenerator):  # plain decoding: drafts are measured apart (_speculative)
        generator.draft_tokens = 0
    return generator


def _device_variants(folder: ModelFolder, device: str) -> list[str]:
    """Our graphs to time: the one the engine serves on ``device`` first, then the folder's other
    current variants built for that device (whatever they are: a new one needs no change here)."""
    served = choose_variant(folder, device)
    others = [
        variant
        for variant in folder.variants
        if variant != served and _runs_on(folder, variant, device) and folder.variant_is_current(variant)
    ]
    return [served, *others]


def _runs_on(folder: ModelFolder, variant: str, device: str) -> bool:
    entry = (folder.card.get("onnx") or {}).get(variant)
    recorded = entry.get("device") if isinstance(entry, dict) else None
    return recorded == device if isinstance(recorded, str) else variant.startswith(f"{device}-")


def _graph_path(folder: ModelFolder, variant: str) -> Path:
    return folder.onnx_path if variant == REFERENCE else folder.variant_path(variant)


class _Sides:
    """Every side, loaded and warmed up in turn (one untimed reply each): ours on each of our
    graphs for the device (the served one first), then CTranslate2 and transformers. The peak
    resident memory is read after each, so each figure is the process's so far."""

    def __init__(self, folder: ModelFolder, prompt: list[int], options: BenchOptions, progress: Progress):
        self.prompt = prompt
        self.config = GenerationConfig(max_new_tokens=options.new_tokens)
        self.contenders: list[Contender] = []
        self.missing: dict[str, str] = {}  # a peer that did not run: why
        variants = _device_variants(folder, options.device)
        self.generator = self._ours(folder, variants[0], options, progress, served=True)
        tokens = self.tokens
        for variant in variants[1:]:
            self._ours(folder, variant, options, progress, served=False)
        ctranslate2 = _ctranslate2_side(folder, prompt, tokens, options, progress)
        if isinstance(ctranslate2, str):
            self.missing["ctranslate2"] = ctranslate2
        else:
            self._add(ctranslate2)
        self._add(_transformers_side(folder.path, prompt, tokens, options, progress))
        if options.device == "cuda":
            self._add(_transformers_side(folder.path, prompt, tokens, options, progress, static=True))

    def _ours(
        self, folder: ModelFolder, variant: str, options: BenchOptions, progress: Progress, *, served: bool
    ) -> Generator:
        graph = _graph_path(folder, variant)
        progress(f"ours: {graph.relative_to(folder.path)} ({variant}) on ONNX Runtime, {options.device}")
        with quiet_torch():
            generator = _our_generator(folder, options.device, variant)
        # the graph's attention over its int8 cache: the native kernel or ONNX Runtime's (chatbot.kernels)
        attention = getattr(getattr(generator, "session", None), "attention", None)
        native = "; native attention" if attention == "native" else ""

        def stream() -> Iterator[Any]:
            return iter(generator.generate(self.prompt, self.config))

        self._add(
            Contender(
                "ours" if served else variant,
                f"ours (ONNX Runtime, `{variant}`{native})" if served else f"ours on `{variant}`{native}",
                partial(timed_stream, stream),
                partial(_threaded, generator, self.prompt, self.config) if served else None,
                variant=variant,
                attention=attention,
            )
        )
        return generator

    def _add(self, contender: Contender) -> None:
        _, _, self.tokens = contender.time_reply()  # warm-up
        contender.peak_rss_mib = _peak_rss_mib()
        self.contenders.append(contender)


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
    new_tokens = {"message_tokens": FOLLOW_UP_TOKENS}
    return {**follow_up, **new_tokens}, {**shared, **new_tokens, "system_tokens": len(prompt)}


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
) -> Contender | str:
    """CTranslate2 as a side, or why there is none."""
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
    with quiet_torch():
        return _ctranslate2_contender(ctranslate2, converted, prompt, tokens)


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


def _ctranslate2_contender(ctranslate2: Any, converted: Path, prompt: list[int], tokens: int) -> Contender:
    generator = ctranslate2.Generator(
        str(converted), device="cpu", compute_type=CT2_QUANTIZATION, intra_threads=_cpus()
    )
    vocabulary = json.loads((converted / "vocabulary.json").read_text(encoding="utf-8"))
    start = [vocabulary[i] for i in prompt]

    def stream() -> Iterator[Any]:
        return iter(generator.generate_tokens(start, max_length=tokens, min_length=tokens))

    def batch(n: int) -> tuple[int, float]:
        started = time.perf_counter()
        results = generator.generate_batch(
            [start] * n, max_length=tokens, min_length=tokens, include_prompt_in_result=False
        )
        return sum(len(r.sequences_ids[0]) for r in results), time.perf_counter() - started

    name = f"CTranslate2 {ctranslate2.__version__} ({CT2_QUANTIZATION})"
    return Contender("ctranslate2", name, partial(timed_stream, stream), batch)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------
# transformers


def _transformers_side(
    path: Path,
    prompt: list[int],
    tokens: int,
    options: BenchOptions,
    progress: Progress,
    *,
    static: bool = False,
) -> Contender:
    """transformers ``generate`` as a side: one reply timed through a streamer (the time of each
    token as ``generate`` hands it over, as ours is timed), N replies as one batched call."""
    import torch
    from transformers import AutoModelForCausalLM

    gpu = options.device == "cuda"
    dtype = torch.float16 if gpu else torch.float32
    key = "transformers-static" if static else "transformers"
    name = f"{_PEER_NAMES[key]}, {str(dtype).split('.')[-1]}"
    progress(f"{name} on the same weights")
    if not gpu:
        torch.set_num_threads(_cpus())  # the bench's threads, as the other sides have
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval().to(options.device)
    ids = torch.tensor([prompt], device=options.device)
    extra = {"cache_implementation": "static"} if static else {}

    def generate(n: int = 1, streamer: Any = None) -> tuple[int, float]:
        batch = ids.repeat(n, 1)
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                batch,
                attention_mask=torch.ones_like(batch),
                do_sample=False,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                pad_token_id=model.config.eos_token_id or 0,
                streamer=streamer,
                **extra,
            )
        if gpu:
            torch.cuda.synchronize()
        return (out.shape[1] - ids.shape[1]) * n, time.perf_counter() - started

    def reply() -> tuple[float, float, int]:
        clock = _token_clock()
        started = time.perf_counter()
        generate(streamer=clock)
        times = clock.times[1:]  # the first put is the prompt
        return times[0] - started, times[-1] - started, len(times)

    return Contender(key, name, reply, generate, on_torch=True, compiles_per_batch=static)


def _token_clock() -> Any:
    """A transformers streamer that notes when each put arrives (the prompt's first, then each
    new token's); reading the token waits for the device, so a GPU's times are real too."""
    from transformers.generation.streamers import BaseStreamer

    class TokenClock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            value.tolist()
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    return TokenClock()
