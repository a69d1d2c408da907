"""`chatbot bench`: both sides measured on the same weights, written as a table and JSON.

Only the shape of the results is checked here; speed itself is never asserted in a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_writes_the_table_and_json_with_ratios(tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    flags = ["--prompt-tokens", "16", "--new-tokens", "6", "--runs", "1", "--concurrency", "1,2"]
    result = subprocess.run(
        [sys.executable, "-m", "chatbot", "bench", str(tiny_model_dir), *flags, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "| ratio (transformers / ours) |" in result.stdout
    results = json.loads((out / "bench.json").read_text())
    assert (out / "bench.md").read_text() in result.stdout
    for side in ("ours", "transformers"):
        assert results[side]["tokens"] == 6 and results[side]["decode_ms_per_token"] > 0
        assert results[side]["first_token_ms"] > 0 and results[side]["peak_rss_mib"] > 0
    assert set(results["ours"]["tokens_per_s"]) == {"1", "2"}
    assert results["ratios"]["decode"] > 0 and results["settings"]["prompt_tokens"] == 16


def test_bench_refuses_bad_counts(tiny_model_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chatbot", "bench", str(tiny_model_dir), "--concurrency", "1,x"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "--concurrency takes counts" in result.stderr
