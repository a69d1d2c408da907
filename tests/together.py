"""Many replies at once: one thread per reply, all released together (the scheduler tests' driver)."""

from __future__ import annotations

import threading

from chatbot import GenerationConfig
from chatbot.generation import Generator, Token


def at_once(
    generator: Generator,
    prompts: list[list[int]],
    configs: list[GenerationConfig],
    keys: list[str] | None = None,
    shared: list[int] | None = None,
) -> list[list[Token]]:
    """Each prompt's reply, generated in its own thread (under its conversation's key and with
    its count of shared leading tokens, when given); the threads start at one barrier."""
    results: list[list[Token]] = [[] for _ in prompts]
    start = threading.Barrier(len(prompts))

    def reply(index: int) -> None:
        start.wait()
        key = keys[index] if keys is not None else None
        common = shared[index] if shared is not None else 0
        results[index] = list(generator.generate(prompts[index], configs[index], key=key, shared=common))

    threads = [threading.Thread(target=reply, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results
