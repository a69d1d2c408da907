"""`chatbot bench MODEL_DIR`: our ONNX engine against transformers ``generate``, same weights, one run.

Measured for each, after a warm-up, as the median of ``runs`` runs on the same random prompt:

* time to first token (the prompt's forward pass and the first pick),
* decode milliseconds per token at batch 1 (the rest of the reply, divided by its tokens),
* aggregate tokens/s with N conversations at once (one thread each; ours only — the engine does
  not batch them yet, so this is the baseline the scheduler of issue 8 has to beat),
* the process's peak resident memory after each side has run.

Both sides generate greedily and exactly ``new_tokens`` tokens: the end-of-turn token does not
stop a reply here (``min_new_tokens`` on the transformers side). The results are printed
as a markdown table with the ratios, and written as ``bench.md`` and ``bench.json``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chatbot.folder import ModelFolder
from chatbot.generation import OnnxGenerator
from chatbot.paths import write_text_atomically
from chatbot.types import GenerationConfig

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchOptions:
    prompt_tokens: int = 128
    new_tokens: int = 64
    runs: int = 5
    concurrency: tuple[int, ...] = (1, 4)
    out: Path = Path("bench")
    seed: int = 0


@dataclass
class Side:
    """One contender's figures (milliseconds, tokens/s, MiB)."""

    name: str
    first_token_ms: float
    decode_ms_per_token: float
    tokens: int
    peak_rss_mib: float
    tokens_per_s: dict[int, float] = field(default_factory=dict)


def run_bench(
    model_dir: str | os.PathLike[str], options: BenchOptions, progress: Progress = print
) -> dict[str, Any]:
    """Benchmark the folder's ONNX model and its transformers twin; write and return the results."""
    folder = ModelFolder(model_dir)
    spec = folder.spec
    length = max(1, min(options.prompt_tokens, spec.n_positions - options.new_tokens))
    rng = np.random.default_rng(options.seed)
    prompt = [int(i) for i in rng.integers(0, min(spec.vocab_size, 50_000) - 8, size=length)]
    config = GenerationConfig(max_new_tokens=options.new_tokens)

    progress(f"ours: ONNX Runtime on {folder.onnx_path.name}, prompt {length} tokens, {options.runs} runs")
    generator = OnnxGenerator(folder, device="cpu")
    generator.stop_token_ids = ()  # every reply runs its full length, so both sides do the same work
    ours = _measure_ours(generator, prompt, config, options)
    progress("transformers generate (eager, fp32) on the same weights")
    theirs = _measure_transformers(folder.path, prompt, ours.tokens, options)
    results = {
        "model": str(folder.path),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "settings": {**asdict(options), "out": str(options.out), "prompt_tokens": length},
        "ours": asdict(ours),
        "transformers": asdict(theirs),
        "ratios": {
            "first_token": theirs.first_token_ms / ours.first_token_ms,
            "decode": theirs.decode_ms_per_token / ours.decode_ms_per_token,
        },
    }
    table = markdown(results)
    options.out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(options.out / "bench.json", json.dumps(results, indent=2) + "\n")
    write_text_atomically(options.out / "bench.md", table)
    progress(f"wrote {options.out / 'bench.md'} and {options.out / 'bench.json'}")
    return results


def _timed_reply(
    generator: OnnxGenerator, prompt: list[int], config: GenerationConfig
) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = 0.0
    count = 0
    for _ in generator.generate(prompt, config):
        count += 1
        if count == 1:
            first = time.perf_counter() - started
    return first, time.perf_counter() - started, count


def _measure_ours(
    generator: OnnxGenerator, prompt: list[int], config: GenerationConfig, options: BenchOptions
) -> Side:
    _timed_reply(generator, prompt, config)  # warm-up
    runs = [_timed_reply(generator, prompt, config) for _ in range(options.runs)]
    tokens = min(count for _, _, count in runs)
    first = statistics.median(f for f, _, _ in runs)
    decode = statistics.median((total - f) / max(1, count - 1) for f, total, count in runs)
    side = Side("ours (ONNX Runtime)", first * 1e3, decode * 1e3, tokens, _peak_rss_mib())
    for n in options.concurrency:
        side.tokens_per_s[n] = _aggregate(generator, prompt, config, n)
    return side


def _aggregate(generator: OnnxGenerator, prompt: list[int], config: GenerationConfig, n: int) -> float:
    """Tokens/s over ``n`` replies generated at once, one thread each."""
    counts = [0] * n

    def reply(index: int) -> None:
        counts[index] = sum(1 for _ in generator.generate(prompt, config))

    threads = [threading.Thread(target=reply, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def _measure_transformers(path: Path, prompt: list[int], tokens: int, options: BenchOptions) -> Side:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)

    def generate(count: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=count,
                min_new_tokens=count,
                pad_token_id=model.config.eos_token_id or 0,
            )
        return time.perf_counter() - started

    generate(tokens)  # warm-up
    first = statistics.median(generate(1) for _ in range(options.runs))
    total = statistics.median(generate(tokens) for _ in range(options.runs))
    decode = (total - first) / max(1, tokens - 1)
    return Side("transformers generate (eager, fp32)", first * 1e3, decode * 1e3, tokens, _peak_rss_mib())


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def markdown(results: dict[str, Any]) -> str:
    """The results as a markdown table (what `chatbot bench` prints)."""
    ours, theirs, ratios = results["ours"], results["transformers"], results["ratios"]
    settings = results["settings"]
    lines = [
        f"# chatbot bench: {results['model']}",
        "",
        f"Prompt {settings['prompt_tokens']} tokens, {ours['tokens']} new tokens (greedy), batch 1, CPU, "
        f"median of {settings['runs']} runs after a warm-up; {results['machine']['cpus']} CPUs.",
        "",
        "| | time to first token (ms) | decode (ms/token) | peak RSS (MiB) |",
        "|---|---:|---:|---:|",
        f"| {ours['name']} | {ours['first_token_ms']:.2f} | {ours['decode_ms_per_token']:.2f} "
        f"| {ours['peak_rss_mib']:.0f} |",
        f"| {theirs['name']} | {theirs['first_token_ms']:.2f} | {theirs['decode_ms_per_token']:.2f} "
        f"| {theirs['peak_rss_mib']:.0f} (after both) |",
        f"| ratio (transformers / ours) | {ratios['first_token']:.2f}× | {ratios['decode']:.2f}× | |",
        "",
        "| conversations at once (ours, one thread each) | tokens/s |",
        "|---:|---:|",
        *(f"| {n} | {rate:.0f} |" for n, rate in ours["tokens_per_s"].items()),
        "",
    ]
    return "\n".join(lines)
