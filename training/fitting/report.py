"""What a training run tells a person: ``report.md`` and ``loss.png`` in the model folder.

The report is written from the card (the single record of the run) and the trainer's log
history, so the two never disagree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPORT_FILE = "report.md"
PLOT_FILE = "loss.png"


def losses(
    history: Sequence[Mapping[str, Any]],
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(epoch, loss) points of the training loss and of the validation loss."""
    train = [(float(h["epoch"]), float(h["loss"])) for h in history if "loss" in h and "epoch" in h]
    valid = [(float(h["epoch"]), float(h["eval_loss"])) for h in history if "eval_loss" in h and "epoch" in h]
    return train, valid


def summarize(history: Sequence[Mapping[str, Any]], *, best_metric: float | None) -> dict[str, Any]:
    """The headline numbers: last training loss, best validation loss and its perplexity."""
    train, valid = losses(history)
    summary: dict[str, Any] = {"train_loss": round(train[-1][1], 4) if train else None}
    best = best_metric if best_metric is not None else (min(v for _, v in valid) if valid else None)
    if best is not None:
        summary["validation_loss"] = round(best, 4)
        summary["validation_perplexity"] = round(math.exp(min(best, 50)), 3)
    return summary


def write_loss_plot(history: Sequence[Mapping[str, Any]], path: Path, *, title: str) -> Path:
    """Training and validation loss against epochs, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; safe in servers and CI
    import matplotlib.pyplot as plt

    train, valid = losses(history)
    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        axes.plot(*zip(*train, strict=True), label="training", color="tab:blue", linewidth=1.2)
    if valid:
        axes.plot(*zip(*valid, strict=True), label="validation", color="tab:orange", marker="o")
    axes.set(xlabel="epoch", ylabel="loss (agent tokens)", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def write_report(
    folder: Path, card: Mapping[str, Any], history: Sequence[Mapping[str, Any]], evaluation: str
) -> Path:
    """``report.md`` and ``loss.png`` for the model folder ``folder`` described by ``card``."""
    write_loss_plot(history, folder / PLOT_FILE, title=str(card.get("name", "training")))
    sections = [
        f"# {card.get('name', 'model')}\n\n"
        f"Trained {card.get('created_at', '')}. Base model: {card.get('base_model', '')}.",
        _data_section(card.get("data", {})),
        _training_section(card.get("training", {}), card.get("metrics", {}), card.get("durations", {})),
        f"## Loss\n\n![training and validation loss]({PLOT_FILE})",
        f"## Evaluation on the validation conversations\n\n{evaluation}",
        _export_section(card.get("onnx", {})),
    ]
    path = folder / REPORT_FILE
    path.write_text("\n\n".join(sections) + "\n", encoding="utf-8")
    return path


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    return "\n".join(["| | |", "|---|---:|", *(f"| {name} | {value} |" for name, value in rows)])


def _authors(written_by: Mapping[str, int]) -> str:
    """The agent turns a feedback export marked, by who wrote them."""
    if not any(written_by.values()):
        return "none (transcripts only)"
    names = {"correction": "staff corrections", "person": "people's replies", "bot": "the bot's replies"}
    return ", ".join(f"{names.get(author, author)} {n}" for author, n in written_by.items())


def _data_section(data: Mapping[str, Any]) -> str:
    rejected = data.get("rejected", {})
    redacted = data.get("redacted", {})
    conversations, examples = data.get("conversations", {}), data.get("examples", {})
    rows = [
        ("files", len(data.get("files", []))),
        ("conversations read", data.get("read", 0)),
        ("kept", data.get("kept", 0)),
        ("rejected", ", ".join(f"{k} {v}" for k, v in rejected.items()) or "none"),
        ("redacted", ", ".join(f"{k} {v}" for k, v in redacted.items() if v) or "nothing found"),
        (
            "training conversations / examples",
            f"{conversations.get('train', 0)} / {examples.get('train', 0)}",
        ),
        (
            "validation conversations / examples",
            f"{conversations.get('validation', 0)} / {examples.get('validation', 0)}",
        ),
        ("learnt (agent) tokens, training", data.get("learnt_tokens", {}).get("train", 0)),
        ("agent turns of a feedback export", _authors(data.get("written_by", {}))),
        ("agent turns too long to learn", data.get("skipped", 0)),
        ("data fingerprint", f"`{data.get('fingerprint', '')}`"),
    ]
    notes = "\n\nEvery rejected conversation is listed by file and line in the output of `chatbot train`."
    return "## Data\n\n" + _table(rows) + (notes if rejected else "")


def _training_section(
    training: Mapping[str, Any], metrics: Mapping[str, Any], durations: Mapping[str, Any]
) -> str:
    rows = [(key.replace("_", " "), value) for key, value in training.items()]
    rows += [(key.replace("_", " "), value) for key, value in metrics.items() if not isinstance(value, dict)]
    rows += [(f"{key.removesuffix('_s')} time (s)", value) for key, value in durations.items()]
    return "## Training\n\n" + _table(rows)


def _export_section(onnx: Mapping[str, Any]) -> str:
    parity = onnx.get("reference", {}).get("parity", {})
    if not parity:
        return "## Export\n\nNo ONNX export recorded."
    return (
        "## Export\n\n`onnx/model.onnx`: the largest difference between ONNX Runtime and PyTorch logits was "
        f"{parity.get('max_abs_diff', float('nan')):.2e} (tolerance {parity.get('tolerance', 0):.0e}) over "
        f"{parity.get('sequences')} sequences and {parity.get('decode_steps')} cached decode steps."
    )
