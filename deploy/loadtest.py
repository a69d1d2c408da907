"""A bounded load run against the web chat, then a check that the store holds every turn.

    python deploy/loadtest.py --url http://127.0.0.1:8080/ --store postgresql+psycopg://... \\
        --conversations 50 --duration 60 --out loadtest

N customers talk at once for the duration, each in its own conversation (its own session cookie
and its own X-Forwarded-For address, as N visitors behind the proxy would be): send a message,
wait for the whole reply, read it for ``--think`` seconds, send the next (a customer typing
faster than the per-conversation rate limit would be refused, as designed). It reports reply
latency (p50/p95/p99), throughput and errors, then reads the store: every reply a customer
received must be there with the message that asked for it. Writes ``loadtest.md`` and
``loadtest.json``; exits 1 on any error or loss.
Needs ``gradio_client`` (``pip install '.[web]'``) and the store's driver.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout's own packages
from chatbot import SQLStore, UnknownConversation
from plugins.web.access import COOKIE, conversation_id  # the web chat's session cookie and ids

QUESTIONS = (
    "Where is my order?",
    "It was order 4512, placed last Tuesday.",
    "Can I change the delivery address?",
    "How long does a refund take?",
    "Thanks, that helps.",
)


@dataclass
class Customer:
    index: int
    cookie: str = field(default_factory=lambda: base64.urlsafe_b64encode(os.urandom(24)).decode())
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    events: list[tuple[float, bool]] = field(default_factory=list)  # (when, answered) for the timeline

    @property
    def address(self) -> str:
        return f"10.{self.index // 65536 % 256}.{self.index // 256 % 256}.{self.index % 256}"


def _talk(url: str, customer: Customer, until: float, think: float) -> None:
    from gradio_client import Client

    headers = {"Cookie": f"{COOKIE}={customer.cookie}", "X-Forwarded-For": customer.address}
    try:
        client = Client(url, verbose=False, headers=headers, download_files=False)
    except Exception as error:  # a replica gone, a proxy error: counted, never fatal to the run
        customer.errors.append(f"connect: {error}")
        return
    turn = 0
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            chat, _ = client.predict(QUESTIONS[turn % len(QUESTIONS)], api_name="/chat")
            refused = _notice(chat)
        except Exception as error:
            refused = f"{type(error).__name__}: {error}"
        if refused:  # an exception, or the page's "⚠️ Not sent: ..." notice
            customer.errors.append(refused)
        else:
            customer.latencies.append(time.perf_counter() - started)
        customer.events.append((time.monotonic(), not refused))
        turn += 1
        time.sleep(max(0.0, min(think, until - time.monotonic())))
    client.close()


def _notice(chat: Any) -> str | None:
    """The page's error notice when the last message is one (the web chat shows refusals so)."""
    last = chat[-1] if isinstance(chat, list) and chat else {}
    content = last.get("content") if isinstance(last, dict) else None
    text = (
        "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if isinstance(content, list)
        else str(content)
    )
    return text if text.startswith("⚠️") else None


def _timeline(customers: list[Customer], started: float, step: float = 5.0) -> list[dict[str, float]]:
    """Replies and errors per ``step`` seconds since the start."""
    buckets: dict[int, list[int]] = {}
    for customer in customers:
        for when, answered in customer.events:
            bucket = buckets.setdefault(int((when - started) // step), [0, 0])
            bucket[0 if answered else 1] += 1
    return [{"from_s": k * step, "replies": v[0], "errors": v[1]} for k, v in sorted(buckets.items())]


def _percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def _stored_replies(store_url: str, customers: list[Customer]) -> dict[int, int]:
    """How many replies the store holds for each customer's conversation."""
    counts = {}
    with SQLStore(store_url, upgrade=False) as store:
        for customer in customers:
            conversation = conversation_id(customer.cookie)
            try:
                turns = store.transcript(conversation)
            except UnknownConversation:
                turns = ()
            counts[customer.index] = sum(1 for t in turns if t.role == "assistant")
    return counts


def run(
    url: str, store: str | None, conversations: int, duration: float, think: float = 3.0
) -> dict[str, Any]:
    customers = [Customer(i) for i in range(conversations)]
    began = time.monotonic()
    until = began + duration
    started = time.perf_counter()
    threads = [threading.Thread(target=_talk, args=(url, c, until, think)) for c in customers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    latencies = [x for c in customers for x in c.latencies]
    errors = [e for c in customers for e in c.errors]
    results: dict[str, Any] = {
        "url": url,
        "conversations": conversations,
        "duration_s": duration,
        "think_s": think,
        "elapsed_s": elapsed,
        "replies": len(latencies),
        "replies_per_s": len(latencies) / elapsed,
        "latency_s": {
            "p50": _percentile(latencies, 0.50),
            "p95": _percentile(latencies, 0.95),
            "p99": _percentile(latencies, 0.99),
            "mean": statistics.fmean(latencies) if latencies else float("nan"),
        },
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "timeline": _timeline(customers, began),
    }
    if store:
        stored = _stored_replies(store, customers)
        missing = {
            c.index: len(c.latencies) - stored[c.index]
            for c in customers
            if stored[c.index] < len(c.latencies)
        }
        results["store"] = {"checked": True, "replies_stored": sum(stored.values()), "missing": missing}
    return results


def markdown(results: dict[str, Any]) -> str:
    latency = results["latency_s"]
    lost = sum(results["store"]["missing"].values()) if "store" in results else "not checked"
    title = (
        f"{results['conversations']} conversations for {results['duration_s']:g} s against {results['url']}"
    )
    lines = [
        f"# load run: {title}",
        "",
        "| replies | replies/s | p50 (s) | p95 (s) | p99 (s) | errors | acknowledged, not stored |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {results['replies']} | {results['replies_per_s']:.1f} | {latency['p50']:.2f} "
        f"| {latency['p95']:.2f} | {latency['p99']:.2f} | {results['errors']} | {lost} |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the web chat, e.g. nginx in front of the replicas")
    parser.add_argument("--store", default=None, help="the replicas' store URL, to check every turn landed")
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument(
        "--think", type=float, default=3.0, help="seconds a customer reads before the next message"
    )
    parser.add_argument("--out", type=Path, default=Path("loadtest"))
    args = parser.parse_args(argv)
    results = run(args.url, args.store, args.conversations, args.duration, args.think)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loadtest.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "loadtest.md").write_text(markdown(results))
    print(markdown(results))
    lost = sum(results["store"]["missing"].values()) if "store" in results else 0
    return 1 if results["errors"] or lost else 0


if __name__ == "__main__":
    raise SystemExit(main())
