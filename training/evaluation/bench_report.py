"""`chatbot bench`'s results as markdown: what it prints and writes as ``bench.md``.

Everything here reads the results' JSON (:func:`training.evaluation.bench.run_bench`), so a
``bench.json`` from another machine prints the same way.
"""

from __future__ import annotations

from typing import Any

MB = 1e6


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables (what `chatbot bench` prints)."""
    settings, machine = results["settings"], results["machine"]
    config = f" (`--config {results['config']}`)" if results.get("config") else ""
    where = f"GPU ({machine['gpu']})" if machine.get("device") == "cuda" else "CPU"
    lines = [
        f"# chatbot bench: {results['model']}{config}",
        "",
        f"Prompt {settings['prompt_tokens']} random tokens, {settings['new_tokens']} new tokens (greedy), "
        f"{where}, {machine['cpus']} CPUs. The sides run interleaved: each of {settings['runs']} rounds "
        "(after a warm-up) times one reply of every side in turn; figures are the rounds' medians with "
        "their middle half (q1–q3) in brackets, ratios are each round's, paired "
        f"(tokens/s: {settings['concurrency_runs']} rounds). Ratios above 1× mean ours is faster. Peak "
        "RSS is the process's once that side was loaded and warm (all sides stay loaded).",
        "",
        _machine_line(machine),
        "",
        *_batch_one_table(results),
        "",
        *_floors_table(results),
        "",
        *_concurrency_table(results),
        "",
        _scaling_line(results["ours"]),
        "",
        _follow_up_line(results["ours"].get("follow_up") or {}),
        "",
        _shared_system_line(results["ours"].get("shared_system") or {}),
        "",
        _quality_line(results.get("quality")),
        "",
        *_speculative_lines(results.get("speculative") or {}),
        *_targets_table(results.get("targets") or []),
    ]
    return "\n".join(lines)


# issue 21's CPU targets, each against the figure of this run that measures it
DECODE_VS_FLOOR = 1.5
SHARED_SYSTEM_MS = 20.0
SCALING = 4.0
SPECULATIVE = 1.3
TARGET_CONFIG = "gpt2"  # the shape the speed targets are set for


def issue_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 21's CPU targets against this run: ``target``, ``measured`` (words) and ``met``
    (``None`` where the run did not measure it, e.g. CTranslate2 not installed or no ``--data``)."""
    if results["machine"].get("device") == "cuda":
        return []
    found: list[dict[str, Any]] = []
    # the speed targets are GPT-2 124M's (`--config gpt2`); on another model a figure is only shown
    sized = results.get("config") == TARGET_CONFIG

    def add(target: str, measured: str | None, met: bool | None, *, any_model: bool = False) -> None:
        if measured and not (sized or any_model):
            measured, met = f"{measured} (the target is `--config {TARGET_CONFIG}`'s)", None
        found.append({"target": target, "measured": measured or "not measured", "met": met})

    variants = results.get("variants") or {}
    for name in ("cpu-int8", "cpu-int4"):
        entry = variants.get(name) or {}
        best, paired = entry.get("decode_vs_floor"), entry.get("decode_vs_round_floor")
        # judged by each round's own floor where the rounds measured one (machine.BandwidthProbe)
        ratio = paired if isinstance(paired, float) else best
        measured = None
        if isinstance(paired, float) and isinstance(best, float):
            measured = f"{paired:.2f}× its round's floor ({best:.2f}× the run's best bandwidth)"
        elif isinstance(best, float):
            measured = f"{best:.2f}× its floor"
        add(
            f"`{name}` decode at batch 1 ≤ {DECODE_VS_FLOOR}× its floor",
            measured,
            _at_most(ratio, DECODE_VS_FLOOR),
        )
    shared = (results["ours"].get("shared_system") or {}).get("first_token_ms")
    add(
        f"first token with a kept system prompt ≤ {SHARED_SYSTEM_MS:.0f} ms",
        f"{shared:.2f} ms" if isinstance(shared, float) else None,
        _at_most(shared, SHARED_SYSTEM_MS),
    )
    scaling = (results["ours"].get("scaling") or {}).get("vs_base") or {}
    most = max(scaling, key=int, default=None)
    at_most = scaling.get(most) if most is not None and int(most) >= 32 else None
    bound = (results["ours"].get("scaling") or {}).get("graph") or {}
    allowed, attention = bound.get("vs_base") or {}, bound.get("attention_ms") or {}
    graph = f"; the graph's own steps allow {allowed[most]:.2f}×" if most in allowed else ""
    if most in attention and most in (bound.get("step_ms") or {}):
        graph += f", attention {attention[most] / bound['step_ms'][most]:.0%} of a {most}-row step"
    add(
        f"32 conversations ≥ {SCALING:.0f}× the tokens/s of one",
        f"{at_most:.2f}× ({most} conversations{graph})" if isinstance(at_most, float) else None,
        None if not isinstance(at_most, float) else at_most >= SCALING,
    )
    ct2 = (results.get("ratios") or {}).get("ctranslate2")
    rows = _ctranslate2_rows(ct2) if ct2 else {}
    add(
        "ahead of CTranslate2 int8 on every row",
        ", ".join(f"{row} {ratio:.2f}×" for row, ratio in rows.items()) if rows else None,
        all(ratio > 1 for ratio in rows.values()) if rows else None,
    )
    held_out = (results.get("speculative") or {}).get("held_out") or {}
    speedup = held_out.get("speedup")
    add(
        f"speculative decoding on held-out conversations ≥ {SPECULATIVE}×, identical text",
        f"{speedup:.2f}×, {'identical' if held_out.get('identical') else 'not identical'}"
        if isinstance(speedup, float)
        else None,
        (speedup >= SPECULATIVE and bool(held_out.get("identical"))) if isinstance(speedup, float) else None,
        any_model=True,  # the demo model's held-out conversations, or any model's with --data
    )
    return found


def _at_most(value: Any, bound: float) -> bool | None:
    return value <= bound if isinstance(value, float) else None


def _ctranslate2_rows(ratios: dict[str, Any]) -> dict[str, float]:
    """Every row's ratio of CTranslate2 to ours (above 1: ours ahead)."""
    rows = {name: ratios[name] for name in ("first_token", "decode") if isinstance(ratios.get(name), float)}
    for n, ratio in (ratios.get("tokens_per_s") or {}).items():
        if isinstance(ratio, float):
            rows[f"{n} at once"] = ratio
    return {row.replace("_", " "): ratio for row, ratio in rows.items()}


def _targets_table(targets: list[dict[str, Any]]) -> list[str]:
    if not targets:
        return []
    verdict = {True: "met", False: "**not met**", None: "–"}
    return [
        "Issue 21's CPU targets, against this run:",
        "",
        "| target | this run | |",
        "|---|---|---|",
        *(f"| {t['target']} | {t['measured']} | {verdict[t['met']]} |" for t in targets),
        "",
    ]


def _speculative_lines(found: dict[str, Any]) -> list[str]:
    """Speculative decoding at batch 1, on real text (``--data``) apart from the random prompt; then
    greedy replies at once drafting together, on real text."""
    from training.evaluation.speculative import section, together_section

    sources = {
        "held_out": "--data, real text",
        "random": "the random prompt: not what customers write; with random weights it flatters drafts",
    }
    lines = [
        line for key, source in sources.items() if key in found for line in (section(found[key], source), "")
    ]
    if "held_out_together" in found:
        lines += [together_section(found["held_out_together"], "--data, real text"), ""]
    return lines


def _machine_line(machine: dict[str, Any]) -> str:
    lacks = f" (not: {' '.join(machine['cpu_lacks'])})" if machine.get("cpu_lacks") else ""
    load = machine.get("load_average_start")
    loaded = " / ".join(f"{value:.2f}" for value in load) if load else "unknown"
    line = (
        f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['threads']} threads; flags "
        f"{' '.join(machine['cpu_flags']) or 'none of the relevant ones'}{lacks}; load average at the "
        f"start {loaded} (1, 5, 15 min)."
    )
    if "read_bandwidth_gbs" not in machine:
        return f"{line} {machine.get('limits_missing', 'Its limits were not measured.')}"
    gemm = machine["gemm"]["int8"]["mlp_in"]
    ways = "; ".join(
        f"{when}: " + ", ".join(f"{way} {value:.1f}" for way, value in measured.items())
        for when, measured in machine["read_bandwidth"].items()
    )
    rounds = machine.get("round_bandwidth_gbs") or []
    each = (
        f" and at the start of each round {', '.join(f'{gbs:.1f}' for gbs in rounds)} GB/s (ONNX Runtime's "
        "int8 GEMV, the median of 3 passes; also just before and after each reply of our graphs, and "
        "each decode is held against the floor of the mean of those two)"
        if rounds
        else ""
    )
    return (
        f"{line} Its limits, measured in this run: read bandwidth {machine['read_bandwidth_gbs']:.1f} GB/s "
        f"({ways}; {machine['read_bandwidth_how']}){each}; GEMM at "
        f"({gemm['m']} × {gemm['k']}) · ({gemm['k']} × {gemm['n']}): int8 {machine['gemm_int8_gops']:.0f} "
        f"GOPS, fp32 {machine['gemm_fp32_gflops']:.0f} GFLOP/s ({machine['gemm_how']})."
    )


def _sides(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The sides in the order they were loaded, a missing peer where it would have been."""
    others = [v for v in results.get("variants", {}).values() if not v["served"]]
    return [results["ours"], *others, *(results[key] for key in _peers(results))]


def _peers(results: dict[str, Any]) -> list[str]:
    """The peers' keys: the missing ones, then those that ran in the order they were loaded."""
    ran = [key for key in results.get("load_order", []) if key in results["ratios"]]
    missing = [
        key
        for key, value in results.items()
        if key not in ("ours", "quality") and isinstance(value, dict) and "missing" in value
    ]
    return [*missing, *ran]


def _spread(figure: float, spread: dict[str, float] | None, form: str = "{:.2f}") -> str:
    if not spread:
        return form.format(figure)
    return f"{form.format(figure)} ({form.format(spread['q1'])}–{form.format(spread['q3'])})"


def _ratio(value: float, iqr: list[float] | None) -> str:
    return f"{value:.2f}×" if not iqr else f"{value:.2f}× ({iqr[0]:.2f}–{iqr[1]:.2f})"


def _batch_one_table(results: dict[str, Any]) -> list[str]:
    lines = [
        "| batch 1 | time to first token (ms) | decode (ms/token) | peak RSS of the process (MiB) |",
        "|---|---:|---:|---:|",
    ]
    for side in _sides(results):
        if "missing" in side:
            lines.append(f"| {side['name']} | {side['missing']} | | |")
            continue
        spread = side.get("spread") or {}
        after = ", ".join(side.get("peak_rss_after") or [])
        lines.append(
            f"| {side['name']} | {_spread(side['first_token_ms'], spread.get('first_token_ms'))} "
            f"| {_spread(side['decode_ms_per_token'], spread.get('decode_ms_per_token'))} "
            f"| {side['peak_rss_mib']:.0f} (after {after or 'it'}) |"
        )
    pairs = [(v["name"], v["vs_ours"]) for v in results.get("variants", {}).values() if "vs_ours" in v]
    pairs += [(results[key]["name"], ratio) for key, ratio in results["ratios"].items()]
    for name, ratio in pairs:
        lines.append(
            f"| {name} / ours | {_ratio(ratio['first_token'], ratio.get('first_token_iqr'))} "
            f"| {_ratio(ratio['decode'], ratio.get('decode_iqr'))} | |"
        )
    return lines


def _floors_table(results: dict[str, Any]) -> list[str]:
    """Each graph of ours against what the machine could do at best (see training.evaluation.floors)."""
    variants = results.get("variants", {})
    lines = [
        "| our graph | read per token (MB: weights + KV cache) | decode floor (ms/token) | decode (ms/token) "
        "| × floor | × its round's floor | prefill (GFLOP) | first-token floor (ms) | first token (ms) "
        "| × floor |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in variants.items():
        label = f"`{name}`{' (served)' if entry['served'] else ''}"
        if "bytes_per_token" not in entry:
            lines.append(f"| {label} | {entry.get('floors_missing', 'not measured')} | | | | | | | | |")
            continue
        paired = entry.get("decode_vs_round_floor")
        round_cell = _ratio(paired, entry.get("decode_vs_round_floor_iqr")) if paired is not None else "–"
        kv = entry["kv_cache_bytes_per_token"]
        first_floor = entry.get("first_token_floor_ms")
        first = f"{entry['first_token_ms']:.2f}"
        first_cells = (
            f"{first_floor:.2f} | {first} | {entry['first_token_vs_floor']:.2f}×"
            if first_floor is not None
            else f"{entry.get('first_token_floor_missing', 'not measured')} | {first} | –"
        )
        lines.append(
            f"| {label}, {entry['precision']} | {entry['bytes_per_token'] / MB:.1f} "
            f"({(entry['bytes_per_token'] - kv) / MB:.1f} + {kv / MB:.1f}) | {entry['decode_floor_ms']:.2f} "
            f"| {entry['decode_ms_per_token']:.2f} | {entry['decode_vs_floor']:.2f}× | {round_cell} "
            f"| {entry['prefill_flops'] / 1e9:.2f} | {first_cells} |"
        )
    return lines


def _concurrency_table(results: dict[str, Any]) -> list[str]:
    columns = _peers(results)
    names = [results[key]["name"] for key in columns]
    ours = results["ours"]
    scaling = (ours.get("scaling") or {}).get("vs_base", {})
    scaling_iqr = (ours.get("scaling") or {}).get("vs_base_iqr", {})
    base = (ours.get("scaling") or {}).get("base", 1)
    lines = [
        "| conversations at once | ours, one thread each through the scheduler (tokens/s) | "
        f"ours against {base} conversation{'s' if base != 1 else ''} (round by round) | "
        + " | ".join(f"{name}, one batch (tokens/s)" for name in names)
        + " | "
        + " | ".join(f"ours / {key}" for key in columns)
        + " |",
        "|---:|---:|---:|" + "---:|" * (2 * len(columns)),
    ]
    spreads = ours.get("tokens_per_s_spread") or {}
    for n, rate in ours["tokens_per_s"].items():
        rates = [_cell(results[key].get("tokens_per_s", {}), n, "{:.0f}") for key in columns]
        ratios = [_paired_cell(results["ratios"].get(key, {}), n) for key in columns]
        lines.append(
            f"| {n} | {_spread(rate, spreads.get(n), '{:.0f}')} "
            f"| {_ratio(scaling[n], scaling_iqr.get(n)) if n in scaling else '–'} "
            f"| {' | '.join(rates)} | {' | '.join(ratios)} |"
        )
    return lines


def _paired_cell(ratio: dict[str, Any], n: Any) -> str:
    value = ratio.get("tokens_per_s", {}).get(n)
    if value is None:
        return "–"
    return _ratio(value, ratio.get("tokens_per_s_iqr", {}).get(n))


def _cell(values: dict[Any, float], n: Any, form: str) -> str:
    value = values.get(n)
    return "–" if value is None else form.format(value)


def _scaling_line(ours: dict[str, Any]) -> str:
    scaling = ours.get("scaling") or {}
    if not scaling.get("vs_base"):
        return "Ours with several conversations at once: not measured."
    most = max(scaling["vs_base"], key=int)
    base = scaling["base"]
    line = (
        f"Ours with {most} conversations at once: {ours['tokens_per_s'][most]:.0f} tokens/s, "
        f"{scaling['vs_base'][most]:.2f}× {base} conversation{'s' if base != 1 else ''}'s "
        f"{ours['tokens_per_s'][base]:.0f} (the median of each round's ratio, both timed in the same "
        f"round; issue 21's target: 32 at {scaling['target']:.0f}× one or more)."
    )
    return f"{line} {_graph_bound_line(ours['tokens_per_s'], scaling.get('graph') or {})}"


def _graph_bound_line(rates: dict[Any, float], graph: dict[str, Any]) -> str:
    """The served graph's own bound for N conversations, and how much of it the scheduler reached."""
    if "missing" in graph or not graph.get("step_ms"):
        return f"What the graph allows: not measured ({graph.get('missing', 'no bare steps timed')})."
    attention = graph.get("attention_ms") or {}
    steps = ", ".join(
        f"{n} rows {ms:.2f} ms" + (f" (attention {attention[n]:.2f} ms of it)" if n in attention else "")
        for n, ms in graph["step_ms"].items()
    )
    reached = ", ".join(
        f"{n}: {rates[n] / bound:.0%} of {bound:.0f} tokens/s ({graph['vs_base'][n]:.2f}× {graph['base']})"
        for n, bound in graph["tokens_per_s"].items()
        if n in rates
    )
    return (
        f"What the graph allows (bare steps, no scheduler: `training/evaluation/step_bound.py`): a "
        f"prefill of the prompt {graph['prefill_ms']:.2f} ms, a decode step at {graph['context']} "
        f"positions {steps}; so N conversations, prefilled one by one and then stepped together, "
        f"give at most N · new tokens / (N · prefill + (new − 1) · step). The scheduler reached {reached}."
        + (
            " Attention: each step less the same step on a copy of the graph without attention "
            f"({_ATTENTION_KINDS.get(str(graph.get('attention')), _ATTENTION_KINDS['onnxruntime'])}; "
            "its share grows with the rows and positions)."
            if attention
            else ""
        )
    )


_ATTENTION_KINDS = {  # chatbot.kernels
    "native": "the native kernel compiled on this machine, chatbot/kernels/attention.c",
    "onnxruntime": "ONNX Runtime's GroupQueryAttention",
}


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
        f"reply and {follow_up['message_tokens']} new tokens): first token in {kept:.2f} ms with the "
        f"first turn's keys and values kept ({follow_up['kept_tokens']} tokens not prefilled), "
        f"{scratch:.2f} ms from scratch ({scratch / kept:.2f}×)."
    )


def _shared_system_line(shared: dict[str, Any]) -> str:
    if not shared:
        return "A new conversation with a system prompt others had: not measured."
    kept, scratch = shared["first_token_ms"], shared["scratch_first_token_ms"]
    what = (
        f"A new conversation's first turn ({shared['prompt_tokens']} tokens: a "
        f"{shared['system_tokens']}-token system prompt, the bench's prompt, that earlier conversations "
        f"started with, and {shared['message_tokens']} tokens of its own): first token in {kept:.2f} ms"
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
