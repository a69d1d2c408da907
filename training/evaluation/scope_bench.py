"""What the out-of-scope signal costs per message.

``python -m training.evaluation.scope_bench MODEL_DIR DATA...``

Loads the model folder's scope index (:mod:`chatbot.scope`) as the engine does, scores every
customer turn of the transcripts ``DATA`` once untimed (warm-up), then ``--runs`` times, and
prints the load time, the index's size and the median time per message over the runs (with the
slowest run's figure beside it). Nothing here needs torch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from chatbot.errors import ChatbotError
from chatbot.versions import model_folder
from training.transcripts.readers import read_transcripts


def measure(model_dir: str | Path, data: list[str], *, runs: int = 5) -> dict[str, float | int]:
    """The index's load time (ms), size, the messages scored and the time per message (µs)."""
    folder = model_folder(model_dir)
    started = time.perf_counter()
    scope = folder.scope
    load_ms = (time.perf_counter() - started) * 1000
    if scope is None:
        raise ChatbotError(
            f"{folder.path} has no scope index (scope.npz)", hint="train it with `chatbot train`"
        )
    transcripts, _ = read_transcripts(data)
    messages = [turn.content for t in transcripts for turn in t.turns if turn.role == "user"]
    if not messages:
        raise ChatbotError("the transcripts hold no customer turn to score", hint="check the paths")
    for message in messages:  # warm-up
        scope.similarity(message)
    per_message = []
    for _ in range(runs):
        clock = time.perf_counter()
        for message in messages:
            scope.similarity(message)
        per_message.append((time.perf_counter() - clock) / len(messages) * 1e6)
    return {
        "load_ms": round(load_ms, 1),
        "indexed_turns": len(scope),
        "messages": len(messages),
        "median_us_per_message": round(statistics.median(per_message), 1),
        "slowest_run_us_per_message": round(max(per_message), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluation.scope_bench", description=__doc__)
    parser.add_argument("model_dir", metavar="MODEL_DIR")
    parser.add_argument("data", metavar="DATA", nargs="+", help="transcripts whose customer turns are scored")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        figures = measure(args.model_dir, args.data, runs=args.runs)
    except ChatbotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for key, value in figures.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
