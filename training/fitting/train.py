"""``chatbot train``: fine-tune GPT-2 on support transcripts and add the result as a new version.

One run goes: read and redact the transcripts (:mod:`training.transcripts.prepare`) → tokenizer and model
(a base model from a hub name or a folder, or a small one from scratch with a tokenizer trained
on the data) → examples (:mod:`training.dataset.examples`) → transformers ``Trainer`` (cosine schedule
with warm-up, weight decay, evaluation, early stopping, best model kept, checkpoints to resume
from) → the best model saved, exported to ONNX with the parity check, evaluated, described in
``card.json``, ``report.md`` and ``loss.png`` → added to the versions root as the current one.

The same code runs in one process or under ``torchrun --nproc_per_node=N`` (gloo on CPU, NCCL on
GPUs): every process trains, only the first writes the model folder.

Example::

    from training.fitting.train import TrainOptions, train
    result = train(TrainOptions(data=("transcripts/",), out="models", from_scratch="small"))
    print(result.folder, result.metrics)
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from chatbot import settings
from chatbot.card import read_card
from chatbot.drafting import DRAFTS_FILE, TABLE_ORDER, DraftTable
from chatbot.errors import ChatbotError, ModelFolderError
from chatbot.folder import ModelFolder, trained_system_prompt
from chatbot.scope import SCOPE_FILE, ScopeIndex
from chatbot.template import DEFAULT_CHAT_TEMPLATE, END_OF_TEXT, END_OF_TURN
from chatbot.types import Progress
from training.card import new_card, set_card_entry, update_card, write_card
from training.dataset.examples import (
    IGNORE,
    DatasetReport,
    Datasets,
    build_datasets,
    pad_batch,
    split_ids,
)
from training.export.kv_cache import DEFAULT_KV_CACHE, KV_CACHES, recorded_scales
from training.fitting.report import REPORT_FILE, summarize, write_report
from training.fitting.tiny import ROLE_TOKENS, random_model, train_tokenizer, wrap_tokenizer
from training.transcripts.prepare import Conversations, example_questions, load_conversations
from training.transcripts.readers import CsvColumns, Transcript

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer

WORK_DIR = ".train"  # inside the versions root: checkpoints of the run in progress


class TrainingError(ChatbotError):
    """A training run that cannot start or finish (bad options, a base that is not GPT-2)."""


@dataclass(frozen=True)
class ModelSize:
    """A GPT-2 shape for training from scratch."""

    n_embd: int  # width of the residual stream
    n_layer: int  # transformer blocks
    n_head: int  # attention heads (n_embd must divide by it)
    n_positions: int  # context window in tokens
    vocab_size: int  # byte-level BPE vocabulary trained on the data (at most this many tokens)
    dropout: float  # on embeddings, attention and residuals; 0 learns fastest in a short run


SIZES = {
    # tests: seconds
    "tiny": ModelSize(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=1024, dropout=0.0),
    # the demo: minutes on a CPU
    "small": ModelSize(n_embd=128, n_layer=4, n_head=4, n_positions=256, vocab_size=2048, dropout=0.0),
    # a GPU or patience
    "medium": ModelSize(n_embd=256, n_layer=6, n_head=8, n_positions=512, vocab_size=8192, dropout=0.1),
}


@dataclass(frozen=True)
class TrainOptions:
    """Everything a run depends on; ``chatbot train --help`` documents the same options."""

    data: tuple[str, ...]  # transcript files, folders or globs
    out: str | os.PathLike[str] = "models"  # versions root: the model becomes its next version
    base: str | None = None  # hub name or model folder to fine-tune (e.g. models/current)
    from_scratch: str | None = None  # or a size from SIZES, trained offline from nothing
    epochs: float = 3.0
    learning_rate: float | None = None  # default: 5e-5 from a base, 2e-3 from scratch
    batch_size: int = 8  # per device
    gradient_accumulation: int = 1
    warmup_ratio: float = 0.05  # share of the steps with a linear warm-up before the cosine decay
    weight_decay: float = 0.01
    max_length: int | None = None  # tokens per example; default and maximum: the model's context
    validation: float = 0.1  # share of conversations held out (split by conversation, seeded)
    seed: int = 0
    patience: int = 3  # evaluations without improvement before stopping early (0: never)
    evals_per_epoch: int = 1
    resume: bool = False  # continue the interrupted run in OUT/.train
    strict: bool = False  # stop at the first rejected transcript
    csv_columns: CsvColumns | None = None
    format: str | None = None  # force the transcript format (jsonl, csv, text)
    system_prompt: str | None = None  # prepended to conversations that have none
    name: str | None = None  # the model's name in its card
    eval_replies: int = 100  # replies generated by the final evaluation (0: skip it)
    precision: str = "auto"  # auto (bf16/fp16 on a GPU, fp32 on a CPU), fp32, bf16, fp16
    kv_cache: str = DEFAULT_KV_CACHE  # how the exported CPU graphs keep keys and values: int8 or float
    make_current: bool = True  # point OUT/current at the new version
    progress_bar: bool = True


@dataclass
class TrainResult:
    """What a run produced (on the process that wrote it; ``folder`` is None elsewhere)."""

    folder: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)


def train(options: TrainOptions, *, progress: Progress | None = None) -> TrainResult:
    """Run one training (see the module docstring); return the new version's folder."""
    say = progress or _stderr
    _check_options(options)
    options = _with_base_system_prompt(options, say)
    started = time.monotonic()
    conversations = load_conversations(
        options.data, strict=options.strict, csv_columns=options.csv_columns, format=options.format
    )
    say(conversations.summary().splitlines()[0])
    train_ids, validation_ids = split_ids(
        [t.id for t in conversations.transcripts], validation=options.validation, seed=options.seed
    )
    tokenizer, model, base = _tokenizer_and_model(options, conversations.transcripts, train_ids, say)
    max_length = min(options.max_length or model.config.n_positions, model.config.n_positions)
    data = _datasets(options, conversations, tokenizer, max_length)
    say(data.report.summary())
    trainer = _trainer(options, model, tokenizer, data)
    durations = {"prepare_s": round(time.monotonic() - started, 1)}
    clock = time.monotonic()
    with warnings.catch_warnings():
        # transformers warns when checkpoint folders share a modification time; it then orders
        # them by step number, which is what we want anyway.
        warnings.filterwarnings("ignore", message="mtime may not be reliable")
        trainer.train(resume_from_checkpoint=_checkpoint(options) if options.resume else None)
    durations["train_s"] = round(time.monotonic() - clock, 1)
    if not trainer.is_world_process_zero():
        return TrainResult(None)
    run = _Run(options, conversations, data.report, base, max_length, durations, train_ids, validation_ids)
    return _finish(run, trainer, tokenizer, say)


def _check_options(options: TrainOptions) -> None:
    if (options.base is None) == (options.from_scratch is None):
        raise TrainingError(
            "say what to start from: --base NAME_OR_DIR or --from-scratch SIZE (not both)",
            hint=f"sizes: {', '.join(SIZES)}; a base is a hub name (e.g. gpt2) or a model folder",
        )
    if options.from_scratch is not None and options.from_scratch not in SIZES:
        raise TrainingError(f"unknown size {options.from_scratch!r}", hint=f"use one of {', '.join(SIZES)}")
    if not 0 <= options.validation < 1:
        raise TrainingError("--validation is a share of conversations: 0 <= x < 1")
    if not 0 <= options.warmup_ratio < 1:
        raise TrainingError("--warmup-ratio is a share of the training steps: 0 <= x < 1")
    if options.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise TrainingError(f"unknown precision {options.precision!r}", hint="use auto, fp32, bf16 or fp16")
    if options.kv_cache not in KV_CACHES:
        raise TrainingError(f"unknown KV cache {options.kv_cache!r}", hint=f"use {' or '.join(KV_CACHES)}")
    if options.epochs <= 0 or options.batch_size < 1 or options.gradient_accumulation < 1:
        raise TrainingError("--epochs, --batch-size and --gradient-accumulation must be positive")


# --- tokenizer and model ----------------------------------------------------------------------


def _tokenizer_and_model(
    options: TrainOptions, transcripts: Sequence[Transcript], train_ids: set[str], say: Progress
) -> tuple[PreTrainedTokenizerBase, PreTrainedModel, str]:
    from transformers import set_seed

    set_seed(options.seed)
    if options.from_scratch is not None:
        size = SIZES[options.from_scratch]
        texts = [turn.content for t in transcripts if t.id in train_ids for turn in t.turns]
        say(f"training a {size.vocab_size}-token tokenizer on {len(texts)} turns")
        tokenizer = wrap_tokenizer(
            train_tokenizer(texts, vocab_size=size.vocab_size), n_positions=size.n_positions
        )
        shape = {k: v for k, v in asdict(size).items() if k not in ("vocab_size", "dropout")}
        dropout = {key: size.dropout for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
        model = random_model(tokenizer, seed=options.seed, **shape, **dropout)
        model.loss_type = "ForCausalLM"  # as in _load_base
        base = f"none: from scratch ({options.from_scratch}, {_parameters(model) / 1e6:.1f}M parameters)"
        return tokenizer, model.train(), base
    assert options.base is not None
    loaded = _load_base(options.base, say)
    return loaded[0], loaded[1], options.base


def _load_base(base: str, say: Progress) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """A GPT-2 from a hub name or a folder, given our chat template and tokens if it lacks them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base)
    except (OSError, ValueError) as error:
        raise TrainingError(
            f"cannot load the base model {base!r}: {error}",
            hint="pass a model folder (e.g. models/current) or a hub name your machine can download",
        ) from error
    if model.config.model_type != "gpt2":
        raise TrainingError(
            f"{base} is a {model.config.model_type} model; the engine serves GPT-2 models",
            hint="fine-tune a GPT-2 checkpoint (gpt2, distilgpt2, a folder made by chatbot train)",
        )
    missing = [t for t in ROLE_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        say(f"adding the chat tokens {' '.join(missing)} to {base}'s vocabulary")
        tokenizer.add_special_tokens({"additional_special_tokens": list(ROLE_TOKENS)})
        model.resize_token_embeddings(len(tokenizer))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = END_OF_TEXT if END_OF_TEXT in tokenizer.get_vocab() else tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    _stop_on_end_of_turn(model, tokenizer)
    model.loss_type = "ForCausalLM"  # transformers cannot tell from GPT-2's class name and says so
    return tokenizer, model.train()


def _stop_on_end_of_turn(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the end-of-turn token (and end of text) stop generation, as the engine expects."""
    stops = [tokenizer.convert_tokens_to_ids(END_OF_TURN)]
    if (eot := tokenizer.convert_tokens_to_ids(END_OF_TEXT)) is not None and eot != tokenizer.unk_token_id:
        stops.append(eot)
    config: Any = model.generation_config
    config.eos_token_id = stops
    config.pad_token_id = tokenizer.pad_token_id


def _parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


# --- data and trainer ------------------------------------------------------------------------


def _datasets(
    options: TrainOptions, conversations: Conversations, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> Datasets:
    from datasets import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    quiet = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return build_datasets(
            conversations.transcripts,
            tokenizer,
            max_length=max_length,
            validation=options.validation,
            seed=options.seed,
            system_prompt=options.system_prompt,
            cache_dir=settings.cache_home() / "datasets",
        )
    finally:
        if not quiet:
            enable_progress_bars()


def _precision(choice: str) -> str:
    """fp32, bf16 or fp16: ``auto`` is bf16 (else fp16) on a GPU and fp32 on a CPU."""
    import torch

    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _trainer(
    options: TrainOptions, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: Datasets
) -> Trainer:
    from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from training.fitting.progress import TrainingProgress

    evaluating = data.validation is not None
    processes = settings.launcher_processes()
    on_cpus = _cpu_processes(processes)
    per_step = options.batch_size * options.gradient_accumulation * processes
    steps_per_epoch = max(1, math.ceil(len(data.train) / per_step))
    eval_steps = max(1, steps_per_epoch // max(1, options.evals_per_epoch))
    precision = _precision(options.precision)
    default_rate = 5e-5 if options.base is not None else 2e-3
    arguments = TrainingArguments(
        output_dir=str(_work_dir(options) / "checkpoints"),
        num_train_epochs=options.epochs,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=options.batch_size * 2,
        gradient_accumulation_steps=options.gradient_accumulation,
        learning_rate=options.learning_rate or default_rate,
        lr_scheduler_type="cosine",
        warmup_steps=options.warmup_ratio,  # a float below 1 is a share of the steps
        weight_decay=options.weight_decay,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=eval_steps,
        save_strategy="steps",
        save_steps=eval_steps,
        save_total_limit=2,
        load_best_model_at_end=evaluating,
        metric_for_best_model="eval_loss" if evaluating else None,
        greater_is_better=False if evaluating else None,
        logging_steps=max(1, steps_per_epoch // 10),
        logging_first_step=True,
        train_sampling_strategy="group_by_length",
        seed=options.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=precision != "fp32",  # pinning only helps (and only works) with a GPU
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # several processes on CPUs (torchrun, accelerate launch): gloo, and accelerate told to stay on
        # the CPU, else it runs each process alone (GPUs use NCCL and need neither)
        ddp_backend="gloo" if on_cpus else None,
        use_cpu=on_cpus,
        ddp_find_unused_parameters=False,  # GPT-2 uses every parameter: skip DDP's extra graph walk
        # Each process averages its own tokens' loss and DDP averages the gradients; averaging the
        # token counts across processes instead makes transformers log the loss times N.
        average_tokens_across_devices=False,
    )
    callbacks = [EarlyStoppingCallback(options.patience)] if evaluating and options.patience > 0 else []
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=data.train.remove_columns("conversation_id"),
        eval_dataset=data.validation.remove_columns("conversation_id") if data.validation else None,
        data_collator=lambda features: pad_batch(features, pad_id=tokenizer.pad_token_id),
        callbacks=[*callbacks, TrainingProgress(enabled=options.progress_bar)],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    return trainer


def _cpu_processes(processes: int) -> bool:
    """Whether several processes (``processes`` > 1) were launched to train together on CPUs."""
    import torch

    return processes > 1 and not torch.cuda.is_available()


def _work_dir(options: TrainOptions) -> Path:
    return Path(options.out) / WORK_DIR


def _checkpoint(options: TrainOptions) -> str:
    """The newest *complete* checkpoint: a run stopped while writing one leaves a folder without
    ``trainer_state.json`` (written last), which transformers' own ``get_last_checkpoint`` would pick."""
    folder = _work_dir(options) / "checkpoints"
    complete = [
        path
        for path in (folder.glob("checkpoint-*") if folder.is_dir() else ())
        if path.name.removeprefix("checkpoint-").isdigit() and (path / "trainer_state.json").is_file()
    ]
    last = (
        str(max(complete, key=lambda path: int(path.name.removeprefix("checkpoint-")))) if complete else None
    )
    if last is None:
        raise TrainingError(
            f"there is no interrupted run to resume in {folder}",
            hint="start a new run without --resume",
        )
    return last


# --- the model folder ------------------------------------------------------------------------


@dataclass
class _Run:
    """What the end of a run needs to describe it."""

    options: TrainOptions
    conversations: Conversations
    dataset: DatasetReport
    base: str
    max_length: int
    durations: dict[str, float]
    train_ids: set[str]
    validation_ids: set[str]


def _finish(run: _Run, trainer: Trainer, tokenizer: PreTrainedTokenizerBase, say: Progress) -> TrainResult:
    """Save the best model into a staging folder, export, evaluate, describe, then install it."""
    from chatbot.versions import ModelVersions
    from training.export.fused_graph import build_variants
    from training.export.reference import export_onnx

    versions = ModelVersions(root=run.options.out)
    staging = versions.staging_dir()
    try:
        trainer.save_model(str(staging))
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle of the options; the card has them
        tokenizer.save_pretrained(staging, save_jinja_files=False)
        write_card(staging, _card(run, trainer))
        write_scope(staging, [t for t in run.conversations.transcripts if t.id in run.train_ids], say)
        write_drafts(staging, trainer.train_dataset, say)
        clock = time.monotonic()
        export_onnx(staging, progress=say)
        build_variants(staging, progress=say, kv_cache=run.options.kv_cache)
        run.durations["export_s"] = round(time.monotonic() - clock, 1)
        evaluation = _evaluate(run, staging, say)
        card = update_card(staging, {"durations": run.durations})
        write_report(staging, card, trainer.state.log_history, evaluation)
        _share(staging)
        folder = versions.add(staging, make_current=run.options.make_current, move=True).path
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(_work_dir(run.options), ignore_errors=True)
    say(f"wrote {folder}; read {folder / REPORT_FILE}")
    return TrainResult(folder, card.get("metrics", {}))


def write_scope(folder: Path, transcripts: Sequence[Transcript], say: Progress) -> dict[str, Any]:
    """Index the customer turns of the training ``transcripts`` into ``folder`` (``scope.npz``,
    ``scope.json``: the out-of-scope signal, :mod:`chatbot.scope`) and record it in the card.

    Turns labelled out of scope are left out of the index (they are what it should not be like)
    and counted in its header and the card; they are still trained on."""
    turns = [turn for transcript in transcripts for turn in transcript.turns if turn.role == "user"]
    indexed = [turn.content for turn in turns if not turn.out_of_scope]
    index = ScopeIndex.build(indexed)
    about = {"customer_turns": len(turns), "labelled_out_of_scope_left_out": len(turns) - len(indexed)}
    index.save(folder, **about)
    entry = {"file": SCOPE_FILE, "distinct_turns_indexed": len(index), **about}
    set_card_entry(folder, ["scope"], entry)
    say(
        f"scope index: {len(index)} distinct customer turns of {len(turns)}"
        f" ({about['labelled_out_of_scope_left_out']} labelled out of scope left out)"
    )
    return entry


def index_folder(
    folder: str | os.PathLike[str],
    data: Sequence[str] = (),
    *,
    progress: Progress | None = None,
    **reading: Any,
) -> dict[str, Any]:
    """Write a trained folder's indexes of its training data again: the scope index and the draft
    table, as ``chatbot train`` writes them (for a folder trained before either existed).

    ``data``: the transcripts it was trained on; by default the files its card records; read with
    ``reading`` (:func:`training_split`'s ``strict``, ``csv_columns``, ``format``). The training
    split is the card's own (``data.validation_share`` and ``data.seed``), so the indexes hold
    what the model was trained on, not its validation conversations."""
    say = progress or _stderr
    split = training_split(folder, data, progress=say, **reading)
    path = Path(folder)
    return {
        "scope": write_scope(path, split.transcripts, say),
        "drafts": write_drafts(path, split.encoded, say),
    }


@dataclass(frozen=True)
class TrainingSplit:
    """The conversations a folder was trained on (its card's split) and their encoded examples."""

    transcripts: list[Transcript]
    encoded: Any  # a datasets.Dataset: input_ids and labels


def training_split(
    folder: str | os.PathLike[str],
    data: Sequence[str] = (),
    *,
    strict: bool = False,
    csv_columns: CsvColumns | None = None,
    format: str | None = None,
    progress: Progress | None = None,
) -> TrainingSplit:
    """The training split of ``data`` (default: the files ``folder``'s card records), split as the
    card records (``data.validation_share``, ``data.seed``) and encoded as training encodes it."""
    from transformers import AutoTokenizer

    say = progress or _stderr
    path = Path(folder)
    model = ModelFolder(path)
    recorded = model.card.get("data") or {}
    files = tuple(data) or tuple(recorded.get("files") or ())
    if not files:
        raise ChatbotError(
            f"{path}'s card names no training data", hint="name the transcripts it was trained on with --data"
        )
    missing = [file for file in files if not data and not Path(file).exists()]
    if missing:  # the card's own record: its files may have moved since
        raise ChatbotError(
            f"{path} was trained on {missing[0]}, which is not there any more",
            hint="name the transcripts the model was trained on with --data",
        )
    conversations = load_conversations(
        files, strict=strict, csv_columns=csv_columns or CsvColumns(), format=format
    )
    say(conversations.summary().splitlines()[0])
    validation = recorded.get("validation_share", TrainOptions.validation)
    seed = recorded.get("seed", TrainOptions.seed)
    train_ids, _ = split_ids([t.id for t in conversations.transcripts], validation=validation, seed=seed)
    transcripts = [t for t in conversations.transcripts if t.id in train_ids]
    encoded = build_datasets(
        transcripts,
        AutoTokenizer.from_pretrained(path),
        max_length=model.spec.n_positions,
        validation=0.0,  # already the training split
        seed=seed,
        system_prompt=model.system_prompt,
    )
    return TrainingSplit(transcripts, encoded.train)


def agent_turns(dataset: Any, before: int = TABLE_ORDER) -> list[np.ndarray]:
    """The tokens the loss was on in ``dataset`` (each agent turn, its stop token included), each
    with up to ``before`` tokens before it (the end of the generation prompt)."""
    replies: list[np.ndarray] = []
    for ids, labels in zip(dataset["input_ids"], dataset["labels"], strict=True):
        ids, learnt = np.asarray(ids, dtype=np.int64), np.asarray(labels) != IGNORE
        edges = np.flatnonzero(np.diff(np.r_[0, learnt.astype(np.int8), 0]))
        replies.extend(
            ids[max(0, start - before) : end] for start, end in zip(edges[::2], edges[1::2], strict=True)
        )
    return replies


def write_drafts(folder: Path, dataset: Any, say: Progress) -> dict[str, Any]:
    """Write the draft table of the agent turns trained on into ``folder`` (``drafts.npz``,
    :class:`chatbot.drafting.DraftTable`: speculative decoding's drafts) and record it in the card.

    The table is built from :func:`agent_turns`, each with the tokens before it, so a reply's
    first tokens are drafted too."""
    table, replies = draft_table(dataset)
    table.save(folder)
    tokens = sum(len(reply) for reply in replies)
    entry = {"file": DRAFTS_FILE, "agent_turns": len(replies), "tokens": tokens, "contexts": len(table)}
    set_card_entry(folder, ["drafts"], entry)
    say(f"draft table: {len(table)} contexts of {len(replies)} agent turns ({tokens} tokens)")
    return entry


def draft_table(dataset: Any, order: int = TABLE_ORDER) -> tuple[DraftTable, list[np.ndarray]]:
    """The draft table of ``dataset``'s agent turns, each with ``order`` tokens before it (a
    table of contexts up to that long), and the turns it was built from."""
    replies = agent_turns(dataset, before=order)
    tokens = np.concatenate(replies) if replies else np.zeros(0, dtype=np.int64)
    return DraftTable.build(tokens, order=order), replies


def _card(run: _Run, trainer: Trainer) -> dict[str, Any]:
    options, state = run.options, trainer.state
    model: Any = trainer.model
    name = options.name or Path(options.out).resolve().name
    card = new_card(
        name=name,
        base_model=run.base,
        description=f"Fine-tuned on {run.dataset.conversations.get('train', 0)} support conversations.",
    )
    card["data"] = {
        **run.conversations.to_dict(),
        "files": [str(Path(f).resolve()) for f in run.conversations.read.files],
        **{k: v for k, v in run.dataset.to_dict().items() if k != "skipped"},
        "skipped": len(run.dataset.skipped),
        "validation_share": options.validation,
        "seed": options.seed,
    }
    train_transcripts = [t for t in run.conversations.transcripts if t.id in run.train_ids]
    card["examples"] = example_questions(train_transcripts)  # offered by the web chat
    card["training"] = {
        "parameters": _parameters(model),
        "context_tokens": run.max_length,
        "vocab_size": model.config.vocab_size,
        "epochs_planned": options.epochs,
        "epochs_run": round(state.epoch or 0, 2),
        "steps": state.global_step,
        "best_checkpoint_step": _best_step(state.best_model_checkpoint),
        "stopped_early": state.global_step < state.max_steps,
        "learning_rate": trainer.args.learning_rate,
        "batch_size": options.batch_size,
        "gradient_accumulation": options.gradient_accumulation,
        "processes": trainer.args.world_size,
        "device": str(trainer.args.device),
        "precision": "bf16" if trainer.args.bf16 else "fp16" if trainer.args.fp16 else "fp32",
        # prepended to conversations without one; serving and `chatbot eval` default to it
        "system_prompt": options.system_prompt,
    }
    card["metrics"] = summarize(state.log_history, best_metric=state.best_metric)
    return card


def _with_base_system_prompt(options: TrainOptions, say: Progress) -> TrainOptions:
    """Without ``--system-prompt``, a base model folder's own (the one it was trained with)."""
    if options.system_prompt is not None or options.base is None or not Path(options.base).is_dir():
        return options
    try:  # the card alone: transformers loads the rest
        system_prompt = trained_system_prompt(read_card(options.base))
    except ModelFolderError:
        return options  # not one of ours: transformers reads it, or says what is wrong
    if system_prompt is None:
        return options
    say(f"system prompt: {system_prompt!r}, as {options.base} was trained (--system-prompt to change it)")
    return replace(options, system_prompt=system_prompt)


def _best_step(checkpoint: str | None) -> int | None:
    if not checkpoint:
        return None
    tail = Path(checkpoint).name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else None


def _evaluate(run: _Run, folder: Path, say: Progress) -> str:
    """Evaluate the exported model on the validation conversations; the markdown for the report."""
    validation = [t for t in run.conversations.transcripts if t.id in run.validation_ids]
    if not validation or run.options.eval_replies <= 0:
        return "Not evaluated: " + ("no validation conversations." if not validation else "--eval-replies 0.")
    from training.evaluation.evaluate import evaluate_model

    training = [t for t in run.conversations.transcripts if t.id in run.train_ids]
    clock = time.monotonic()
    say(f"evaluating on {len(validation)} validation conversations")
    result = evaluate_model(
        folder,
        validation,
        train=training,
        max_replies=run.options.eval_replies,
        system_prompt=run.options.system_prompt,
    )
    run.durations["evaluate_s"] = round(time.monotonic() - clock, 1)
    set_card_entry(folder, ["metrics", "evaluation"], result.to_dict())
    model = ModelFolder(folder)
    reference = result.perplexity.value
    lines = [_variant_perplexity(model, v, validation, reference, run, say) for v in model.variants]
    return "\n\n".join([result.to_markdown(), *lines])


def _variant_perplexity(
    model: ModelFolder,
    variant: str,
    validation: list[Transcript],
    reference: float | None,
    run: _Run,
    say: Progress,
) -> str:
    """Perplexity of a fast variant on the validation conversations, recorded in its card entry."""
    entry = record_variant_perplexity(
        model,
        variant,
        validation,
        reference,
        system_prompt=run.options.system_prompt,
        progress=say,
    )
    if entry["change"] is None:
        return f"Perplexity of `{variant}`: not measured."
    tried = entry.get("coarser")
    return (
        f"Perplexity of `{variant}`: {entry['value']:.4g} against {reference:.4g} for the reference export "
        f"({entry['change']:+.2%})"
        + (f"; in blocks of {tried['block_size']} it was {tried['change']:+.2%}." if tried else ".")
    )


def record_variant_perplexity(
    model: ModelFolder,
    variant: str,
    validation: list[Transcript],
    reference: float | None,
    *,
    system_prompt: str | None = None,
    progress: Progress | None = None,
    budget: float | None = None,
) -> dict[str, Any]:
    """Measure ``variant``'s perplexity on ``validation`` against the reference export's
    (``reference``) and record it in its card entry (``onnx.<variant>.perplexity``); returns it.

    int4 is built in blocks of 256 inputs per scale, the faster (README, "Fast graphs"). Where
    its perplexity is further from the reference than ``budget`` (default: how far the engine
    serves int4 by default, :data:`chatbot.loader.INT4_MAX_PERPLEXITY_CHANGE`), it is built again
    in blocks of 128 and measured again, keeping its keys and values as they were (int8 with the
    scales beside it, or float32); the entry keeps what the coarser blocks gave under ``coarser``."""
    from chatbot.loader import INT4, INT4_MAX_PERPLEXITY_CHANGE
    from training.evaluation.evaluate import variant_perplexity
    from training.export.fused_graph import INT4_FALLBACK_BLOCK, build_variant

    say = progress or (lambda message: None)
    budget = INT4_MAX_PERPLEXITY_CHANGE if budget is None else budget

    def measure() -> dict[str, Any]:
        say(f"perplexity of the {variant} graph on the validation conversations")
        value = variant_perplexity(model, variant, validation, system_prompt=system_prompt).value
        change = value / reference - 1 if value is not None and reference else None
        return {"value": value, "reference": reference, "change": change}

    entry = measure()
    built = (read_card(model.path).get("onnx") or {}).get(variant, {})
    block = built.get("block_size")
    coarse = variant == INT4 and isinstance(block, int) and block > INT4_FALLBACK_BLOCK
    if coarse and entry["change"] is not None and entry["change"] > budget:
        say(
            f"{variant} in blocks of {block}: perplexity {entry['change']:+.2%}, beyond {budget:.0%}; "
            f"building it in blocks of {INT4_FALLBACK_BLOCK}"
        )
        scales = recorded_scales(model.path, variant)
        cache = "int8" if scales is not None else "float"  # the same scales: not calibrated again
        build_variant(
            model.path,
            variant,
            progress=say,
            kv_cache=cache,
            kv_scales=scales,
            int4_block=INT4_FALLBACK_BLOCK,
        )
        entry = {**measure(), "coarser": {"block_size": block, **entry}}
    set_card_entry(model.path, ["onnx", variant, "perplexity"], entry)
    return entry


def _share(folder: Path) -> None:
    """Make the new folder readable like any other: mkdtemp and safetensors create private files."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
