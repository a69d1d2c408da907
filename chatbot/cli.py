"""The `chatbot` command.

The command line is the composition root: it is the one place in ``chatbot`` allowed to reach
into ``training`` (lazily, for `train`, `eval`, `export` and `demo`), and it finds channels
through their entry points, never by importing ``plugins``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chatbot import paths
from chatbot.channels import Channel, available_channels, find_channel
from chatbot.engine import Engine, EngineConfig
from chatbot.errors import ChannelError, ChatbotError, StoreError
from chatbot.feedback import ExportOptions, export_feedback, export_feedback_file, parse_since
from chatbot.generation import DEVICES
from chatbot.logs import configure as configure_logging
from chatbot.settings import apply_config_file
from chatbot.store import display_name, open_store
from chatbot.types import GenerationConfig
from chatbot.versions import ModelVersions, VersionInfo, default_root, no_versions_error

if TYPE_CHECKING:
    from training.readers import CsvColumns

DEMO_CHANNEL = "web"
DEMO_DESCRIPTION = (
    "A demo model trained on a synthetic shop's support chats: ask about orders, deliveries, "
    "returns, refunds, payments or your account."
)
TRAIN_EXTRA = "install the training tools with `pip install 'chatbot[train]'`"
RESTART_NOTE = "a running server keeps the version it started with: restart it to serve this one"

# Commands that later releases fill in: shown in the help so users see where the tool is going.
PLANNED: dict[str, str] = {}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 error, 2 usage)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(channel_flags=_chosen_channel(args_list))
        args = parser.parse_args(args_list)
        apply_config_file()  # under the real environment: a variable already set wins
        serving = args.run in (_serve, _demo) and getattr(args, "channel", "") != "terminal"  # log each reply
        configure_logging(chatbot_level=logging.INFO if serving else logging.WARNING)
        return int(args.run(args))
    except ChatbotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _chosen_channel(argv: list[str]) -> dict[str, type[Channel]]:
    """The channel whose flags the command needs: `chat` is the terminal, `serve` names one,
    `demo` names one or serves the web chat."""
    if argv[:1] == ["chat"]:
        return {"chat": find_channel("terminal").load()}
    if argv[:1] in (["serve"], ["demo"]):
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--channel", default=DEMO_CHANNEL if argv[0] == "demo" else None)
        name = pre.parse_known_args(argv[1:])[0].channel
        return {argv[0]: find_channel(name).load()} if name else {}
    return {}


def build_parser(*, channel_flags: dict[str, type[Channel]] | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``channel_flags`` maps a command to the channel whose flags it takes."""
    flags = channel_flags or {}
    parser = argparse.ArgumentParser(
        prog="chatbot",
        description="Fine-tune GPT-2 on support transcripts and serve it with ONNX Runtime.",
        epilog="Run `chatbot COMMAND --help` for a command's options.",
    )

    def show_help(_: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(run=show_help)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    chat = commands.add_parser("chat", help="talk to a model in the terminal")
    _add_model_options(chat)
    if "chat" in flags:
        flags["chat"].add_arguments(chat)
    chat.set_defaults(run=_serve, channel="terminal")

    serve = commands.add_parser("serve", help="serve a model on a channel (see `chatbot plugins`)")
    serve.add_argument("--channel", required=True, help="the channel to serve on, e.g. terminal")
    _add_model_options(serve)
    if "serve" in flags:
        flags["serve"].add_arguments(serve)
    serve.set_defaults(run=_serve)

    export = commands.add_parser("export", help="export a model folder to ONNX and check parity")
    export.add_argument("model_dir", metavar="MODEL_DIR", type=Path)
    export.add_argument(
        "--tolerance", type=float, default=1e-3, help="largest allowed |ONNX - PyTorch| logit"
    )
    export.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="NAME",
        help="fast graph to build from the weights: cpu-int8 (default), cpu-fp32, cuda-fp16; repeatable",
    )
    export.add_argument("--reference-only", action="store_true", help="build no fast variant")
    export.add_argument(
        "--exporter",
        choices=("chatbot", "optimum"),
        default="chatbot",
        help="what writes onnx/model.onnx: chatbot (GPT-2 from its weights, the default) or optimum "
        "(any architecture; needs `chatbot[optimum]` in an environment of its own)",
    )
    export.set_defaults(run=_export)

    plugins = commands.add_parser("plugins", help="list the installed channels")
    plugins.set_defaults(run=_plugins)

    demo = commands.add_parser(
        "demo", help="chat with the default model (trained offline on the bundled sample the first time)"
    )
    demo.add_argument("--rebuild", action="store_true", help="train the default model again")
    demo.add_argument(
        "--channel",
        default=DEMO_CHANNEL,
        help=f"where to chat: {DEMO_CHANNEL} (default) or terminal, or any installed channel",
    )
    _add_generation_options(demo)
    if "demo" in flags:
        flags["demo"].add_arguments(demo)
    demo.set_defaults(run=_demo)

    _add_train_command(commands)
    _add_eval_command(commands)
    _add_bench_command(commands)
    _add_models_commands(commands)
    _add_feedback_commands(commands)
    _add_db_commands(commands)
    _add_config_command(commands)

    for name, summary in PLANNED.items():
        planned = commands.add_parser(name, help=f"{summary} (coming in a later release)")
        planned.set_defaults(run=_planned(name))
    return parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", metavar="MODEL_DIR", type=Path, help="a model folder")
    parser.add_argument(
        "--store",
        default=None,
        help="conversation store: a SQLite file or a SQLAlchemy URL "
        "(default: $CHATBOT_STORE, else ~/.local/share/chatbot/conversations.db)",
    )
    parser.add_argument("--device", choices=DEVICES, default=None, help="default: $CHATBOT_DEVICE or auto")
    parser.add_argument(
        "--variant",
        default=None,
        help="graph to serve: auto (the folder's fast variant for the device), reference, cpu-int8, "
        "cpu-fp32 (default: $CHATBOT_VARIANT or auto)",
    )
    _add_generation_options(parser)


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    defaults, config = GenerationConfig(), EngineConfig()
    group = parser.add_argument_group("replies")
    group.add_argument(
        "--system-prompt",
        default=None,
        help="system prompt for new conversations (default: the one the model was trained with, if any)",
    )
    group.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    group.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy")
    group.add_argument("--top-k", type=int, default=defaults.top_k)
    group.add_argument("--top-p", type=float, default=defaults.top_p)
    group.add_argument("--repetition-penalty", type=float, default=defaults.repetition_penalty)
    group.add_argument("--seed", type=int, default=None)
    group.add_argument(
        "--handover-below",
        type=float,
        default=config.handover_below,
        help="mean token log-prob under which a reply is flagged for a person",
    )
    group.add_argument("--max-message-chars", type=int, default=config.max_message_chars)
    limits = parser.add_argument_group("limits (0 turns one off)")
    for flag, kind, default, meaning in (
        ("--rate-limit", float, config.conversation_rate, "messages a minute per conversation"),
        (
            "--client-rate-limit",
            float,
            config.client_rate,
            "messages a minute per client (address, Slack user)",
        ),
        ("--max-concurrent-replies", int, config.max_concurrent_replies, "replies generated at once"),
        ("--queue-timeout", float, config.queue_timeout_s, "seconds a reply may wait in line for a slot"),
    ):
        limits.add_argument(flag, type=kind, default=default, help=f"{meaning} (default: {default})")


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    try:
        generation = GenerationConfig(
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            seed=args.seed,
        )
    except ValueError as error:
        raise ChatbotError(str(error), hint="fix the flag's value") from error
    return EngineConfig(
        generation=generation,
        system_prompt=args.system_prompt,
        max_message_chars=args.max_message_chars,
        handover_below=args.handover_below,
        conversation_rate=args.rate_limit or None,
        client_rate=args.client_rate_limit or None,
        max_concurrent_replies=args.max_concurrent_replies or None,
        queue_timeout_s=args.queue_timeout,
    )


def _serve(args: argparse.Namespace) -> int:
    channel = find_channel(args.channel).load()
    store = args.store or paths.default_store()
    with Engine.from_folder(
        args.model_dir,
        store=store,
        device=getattr(args, "device", None),
        variant=getattr(args, "variant", None),
        config=_engine_config(args),
    ) as engine:
        return channel(engine, args).run()


def _export(args: argparse.Namespace) -> int:
    try:
        from training.export import export_onnx
    except ImportError as error:
        raise ChatbotError(
            f"`chatbot export` needs PyTorch and transformers ({error})", hint=TRAIN_EXTRA
        ) from error
    parity = export_onnx(args.model_dir, tolerance=args.tolerance, exporter=args.exporter, progress=_progress)
    print(f"exported {args.model_dir / 'onnx' / 'model.onnx'}")
    diff, tolerance = parity["max_abs_diff"], parity["tolerance"]
    print(f"parity: max |ONNX - PyTorch| logit = {diff:.2e} (tolerance {tolerance:.0e})")
    if args.reference_only:
        return 0
    from training.graph import DEFAULT_VARIANTS, build_variants

    entries = build_variants(args.model_dir, args.variant or DEFAULT_VARIANTS, progress=_progress)
    for entry in entries.values():
        check = entry["parity"]
        print(
            f"built {entry['path']}: {entry['nodes']} nodes, logits within {check['max_rel_diff']:.2g} "
            f"of the reference (tolerance {check['tolerance']:g}), greedy tokens "
            f"{check['greedy_agreement']:.1%} the same"
        )
    return 0


def _plugins(args: argparse.Namespace) -> int:
    channels = available_channels()
    if not channels:
        print("no channels installed")
        return 0
    for info in channels:
        try:
            summary = info.load().summary
        except ChannelError as error:
            summary = f"unavailable: {error}"
        print(f"{info.name:<10} {summary}\n{'':<10} {info.target} (from {info.distribution})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    root = paths.cache_home() / "demo"
    current = None if args.rebuild else ModelVersions(root=root).current()
    if current is None:
        try:
            from training.demo import ensure_demo_model
        except ImportError as error:
            raise ChatbotError(
                f"training the demo model needs PyTorch and transformers ({error})", hint=TRAIN_EXTRA
            ) from error
        folder = ensure_demo_model(rebuild=args.rebuild, root=root, progress=_progress)
    else:
        folder = current.path
    _progress(
        f"the default model ({folder}) was trained on a synthetic shop's support chats: ask about "
        "orders, deliveries, returns, refunds, payments or your account. Train your own with `chatbot train`."
    )
    args.model_dir, args.store, args.device = folder, paths.default_store(), None
    if getattr(args, "description", None) == "":  # the web page says what this model knows
        args.description = DEMO_DESCRIPTION
    return _serve(args)


def _planned(name: str) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        print(f"`chatbot {name}` is not in this version yet: {PLANNED[name]}.", file=sys.stderr)
        return 2

    return run


def _add_config_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser(
        "config",
        help="every setting with its value and where it came from (flag, environment, config file, default)",
        description="Settings come from a flag, else the environment, else the config file "
        "($CHATBOT_CONFIG or ./chatbot.toml), else the default. Secrets are masked. Give the flags "
        "you would give `serve` to see what they change.",
    )
    config.add_argument("--store", default=None, help="as `serve --store`")
    config.add_argument("--device", default=None, help="as `serve --device`")
    config.add_argument("--variant", default=None, help="as `serve --variant`")
    config.add_argument("--root", default=None, help="as `models --root`")
    config.set_defaults(run=_config)


def _config(args: argparse.Namespace) -> int:
    from chatbot.settings import config_path, describe

    flags = {"--store": args.store, "--device": args.device, "--variant": args.variant, "--root": args.root}
    rows = describe(flags)
    width = max(len(name) for name, _, _ in rows)
    used = config_path()
    print(f"config file: {used if used else 'none (set $CHATBOT_CONFIG or create ./chatbot.toml)'}")
    for name, value, source in rows:
        print(f"{name:<{width}}  {value or '(unset)'}  [{source}]")
    return 0


def _add_db_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    db = commands.add_parser("db", help="the conversation store's schema: show it, upgrade it")
    db.set_defaults(run=_usage(db))
    actions = db.add_subparsers(title="actions", metavar="ACTION")
    upgrade = actions.add_parser(
        "upgrade", help="apply the schema migrations the store lacks (creates an empty store)"
    )
    upgrade.set_defaults(run=_db_upgrade)
    status = actions.add_parser(
        "status", help="the store's schema revision and the newest this chatbot knows"
    )
    status.set_defaults(run=_db_status)
    for action in (upgrade, status):
        action.add_argument(
            "--store", default=None, help="a SQLite file or a SQLAlchemy URL (default: $CHATBOT_STORE)"
        )


def _db_upgrade(args: argparse.Namespace) -> int:
    from chatbot.store import upgrade_store

    location = args.store or paths.default_store()
    before, after = upgrade_store(location)
    shown = display_name(location)
    if before == after:
        print(f"{shown}: schema at revision {after}, the newest; nothing to do")
    else:
        print(f"{shown}: schema upgraded from revision {before or '(empty)'} to {after}")
    return 0


def _db_status(args: argparse.Namespace) -> int:
    from chatbot.store import schema_head, store_revision

    location = _existing_store(args.store or paths.default_store())
    current, head = store_revision(location), schema_head()
    state = "up to date" if current == head else "behind: run `chatbot db upgrade`"
    print(f"{display_name(location)}: schema revision {current or '(empty)'}, newest {head} ({state})")
    return 0 if current == head else 1


def _add_models_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = commands.add_parser("models", help="list model versions, switch to one, roll back")
    models.set_defaults(run=_usage(models))
    actions = models.add_subparsers(title="actions", metavar="ACTION")
    listing = actions.add_parser("list", help="the versions, oldest first; * marks the current one")
    listing.set_defaults(run=_models_list)
    use = actions.add_parser("use", help="make VERSION the current version")
    use.add_argument("version", metavar="VERSION", help="a version name, e.g. v3 (or 3)")
    use.set_defaults(run=_models_use)
    rollback = actions.add_parser("rollback", help="go back to the version that was current before")
    rollback.set_defaults(run=_models_rollback)
    add = actions.add_parser("add", help="add a model folder as the next version and make it current")
    add.add_argument("folder", metavar="FOLDER", type=Path, help="a complete model folder")
    add.add_argument("--move", action="store_true", help="move the folder in instead of copying it")
    add.add_argument("--keep-current", action="store_true", help="add it without making it current")
    add.set_defaults(run=_models_add)
    for action in (listing, use, rollback, add):
        action.add_argument(
            "--root",
            type=Path,
            default=None,
            help="the versions root (default: $CHATBOT_MODELS, else ./models)",
        )


def _add_feedback_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    feedback = commands.add_parser("feedback", help="turn rated conversations into training data")
    feedback.set_defaults(run=_usage(feedback))
    actions = feedback.add_subparsers(title="actions", metavar="ACTION")
    export = actions.add_parser(
        "export",
        help="write the stored conversations as JSON Lines transcripts, disliked replies cut out",
    )
    export.add_argument("--store", default=None, help="conversation store (default: $CHATBOT_STORE)")
    export.add_argument("--out", type=Path, default=None, help="a .jsonl file (default: standard output)")
    export.add_argument("--only-liked", action="store_true", help="only conversations with a thumbs up")
    export.add_argument("--since", default=None, help="only conversations started on or after this date")
    export.add_argument(
        "--keep-unfinished", action="store_true", help="keep replies cut at --max-new-tokens or cancelled"
    )
    export.set_defaults(run=_feedback_export)


def _versions(args: argparse.Namespace) -> ModelVersions:
    return ModelVersions(root=args.root or default_root())


# what `chatbot models list` shows of a version's card, when it has them: the figures that
# compare versions (a label each); a card with none of them shows its first four numbers
LISTED_METRICS = {
    "validation_loss": "validation_loss",
    "validation_perplexity": "perplexity",
    "evaluation.scores.model.rouge_l": "rouge_l",
    "evaluation.scores.model.bleu": "bleu",
}


def _describe(info: VersionInfo) -> str:
    """One line of `chatbot models list`: marker, version, name, creation time, a few metrics."""
    numbers = info.metrics
    chosen = [(label, numbers[key]) for key, label in LISTED_METRICS.items() if key in numbers]
    metrics = " ".join(f"{key}={value:.4g}" for key, value in chosen or list(numbers.items())[:4])
    detail = info.problem or f"{info.name:<20} {info.created_at:<25} {metrics}".rstrip()
    return f"{'*' if info.current else ' '} {info.version:<5} {detail}"


def _short(info: VersionInfo) -> str:
    return f"{info.version} ({info.name}, created {info.created_at or 'at an unknown time'})"


def _models_list(args: argparse.Namespace) -> int:
    versions = _versions(args)
    infos = versions.list()
    if not infos:
        raise no_versions_error(versions.root)
    for info in infos:
        print(_describe(info))
    return 0


def _models_use(args: argparse.Namespace) -> int:
    info = _versions(args).use(args.version)
    print(f"current version: {_short(info)}")
    _progress(RESTART_NOTE)
    return 0


def _models_rollback(args: argparse.Namespace) -> int:
    versions = _versions(args)
    before = versions.current()
    info = versions.rollback()  # raises when there is no current version
    print(f"rolled back from {before.version if before else 'none'} to {_short(info)}")
    _progress(RESTART_NOTE)
    return 0


def _models_add(args: argparse.Namespace) -> int:
    versions = _versions(args)
    info = versions.add(args.folder, make_current=not args.keep_current, move=args.move)
    current = versions.current()
    print(f"added {_short(info)} as {info.path}; current version: {current.version if current else 'none'}")
    return 0


def _feedback_export(args: argparse.Namespace) -> int:
    options = ExportOptions(
        only_liked=args.only_liked,
        since=None if args.since is None else parse_since(args.since),
        keep_unfinished=args.keep_unfinished,
    )
    with open_store(_existing_store(args.store or paths.default_store())) as store:
        if args.out is None:
            report = export_feedback(store, sys.stdout, options)
        else:
            report = export_feedback_file(store, args.out, options)
    _progress(report.summary() + (f" -> {args.out}" if args.out else ""))
    return 0


def _existing_store(location: str) -> str:
    """``location`` unless it names a SQLite file that does not exist (opening would create it)."""
    if "://" not in location and location != ":memory:" and not Path(location).expanduser().is_file():
        raise StoreError(
            f"no conversation store at {location}",
            hint="pass --store FILE_OR_URL, or set CHATBOT_STORE to the store the chat or serve command used",
        )
    return location


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return run


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _add_train_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = commands.add_parser(
        "train",
        help="fine-tune a model on support transcripts; it becomes the next version",
        description="Read and redact transcripts, fine-tune GPT-2 on the agent turns, export to ONNX "
        "with a parity check, evaluate, and add the model to the versions root as the current version.",
    )
    train.add_argument(
        "--data", nargs="+", required=True, metavar="PATH", help="transcript files, folders or globs"
    )
    train.add_argument(
        "--out", type=Path, default=None, help="versions root (default: $CHATBOT_MODELS or ./models)"
    )
    start = train.add_mutually_exclusive_group(required=True)
    start.add_argument(
        "--base", metavar="NAME_OR_DIR", help="a hub name or a model folder, e.g. models/current"
    )
    start.add_argument(
        "--from-scratch", metavar="SIZE", choices=("tiny", "small", "medium"), help="tiny, small or medium"
    )
    run = train.add_argument_group("training")
    run.add_argument("--epochs", type=float, default=3.0)
    run.add_argument(
        "--learning-rate", type=float, default=None, help="default 5e-5 from a base, 2e-3 from scratch"
    )
    run.add_argument("--batch-size", type=int, default=8, help="examples per device and step")
    run.add_argument("--gradient-accumulation", type=int, default=1)
    run.add_argument("--warmup-ratio", type=float, default=0.05)
    run.add_argument("--weight-decay", type=float, default=0.01)
    run.add_argument("--max-length", type=int, default=None, help="tokens per example (default: the context)")
    run.add_argument("--validation", type=float, default=0.1, help="share of conversations held out")
    run.add_argument(
        "--patience", type=int, default=3, help="evaluations without improvement before stopping"
    )
    run.add_argument("--evals-per-epoch", type=int, default=1)
    run.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--resume", action="store_true", help="continue the interrupted run in OUT/.train")
    run.add_argument(
        "--eval-replies", type=int, default=100, help="replies generated by the final evaluation"
    )
    run.add_argument("--name", default=None, help="the model's name in its card")
    run.add_argument(
        "--system-prompt",
        default=None,
        help="prepended to conversations without one (default with a --base folder: its own, if any)",
    )
    run.add_argument("--keep-current", action="store_true", help="add the version without making it current")
    _add_reading_options(train)
    train.set_defaults(run=_train)


def _add_reading_options(parser: argparse.ArgumentParser) -> None:
    reading = parser.add_argument_group("reading transcripts")
    reading.add_argument("--strict", action="store_true", help="stop at the first rejected conversation")
    reading.add_argument(
        "--format", choices=("jsonl", "csv", "text"), default=None, help="default: by extension"
    )
    for column in ("conversation", "speaker", "text", "timestamp"):
        reading.add_argument(
            f"--csv-{column}", metavar="COLUMN", default=None, help=f"the CSV {column} column"
        )


def _csv_columns(args: argparse.Namespace) -> CsvColumns:
    from training.readers import CsvColumns

    return CsvColumns(
        conversation=args.csv_conversation,
        speaker=args.csv_speaker,
        text=args.csv_text,
        timestamp=args.csv_timestamp,
    )


def _train(args: argparse.Namespace) -> int:
    try:
        from training.train import TrainOptions, train
    except ImportError as error:
        raise ChatbotError(
            f"`chatbot train` needs PyTorch and transformers ({error})", hint=TRAIN_EXTRA
        ) from error
    options = TrainOptions(
        data=tuple(args.data),
        out=args.out or default_root(),
        base=args.base,
        from_scratch=args.from_scratch,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        max_length=args.max_length,
        validation=args.validation,
        seed=args.seed,
        patience=args.patience,
        evals_per_epoch=args.evals_per_epoch,
        resume=args.resume,
        eval_replies=args.eval_replies,
        precision=args.precision,
        name=args.name,
        system_prompt=args.system_prompt,
        make_current=not args.keep_current,
        strict=args.strict,
        format=args.format,
        csv_columns=_csv_columns(args),
    )
    result = train(options, progress=_progress)
    if result.folder is not None:
        metrics = ", ".join(f"{k} {v}" for k, v in result.metrics.items() if isinstance(v, (int, float)))
        print(f"{result.folder}: {metrics}")
    return 0


def _add_bench_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure speed and memory against transformers generate and CTranslate2",
        description="Time to first token, decode ms/token and tokens/s with N conversations at once for "
        "our ONNX engine, transformers generate and (when installed) CTranslate2, on the same weights: "
        "a model folder, or a named shape with random weights built once in the cache (--config).",
    )
    bench.add_argument(
        "model_dir", metavar="MODEL_DIR", type=Path, nargs="?", help="a model folder (or versions root)"
    )
    bench.add_argument(
        "--config",
        metavar="NAME",
        help="instead of MODEL_DIR, a named shape with random weights, built once in the cache: "
        "gpt2 (124M) or tiny",
    )
    bench.add_argument("--prompt-tokens", type=int, default=128, help="prompt length (default: 128)")
    bench.add_argument("--new-tokens", type=int, default=64, help="tokens generated per reply (default: 64)")
    bench.add_argument("--runs", type=int, default=5, help="timed runs after a warm-up; medians (default: 5)")
    bench.add_argument(
        "--concurrency",
        default="1,8,32",
        help="conversations at once for the tokens/s rows (default: 1,8,32)",
    )
    bench.add_argument(
        "--concurrency-runs", type=int, default=3, help="runs per tokens/s figure; medians (default: 3)"
    )
    bench.add_argument("--out", type=Path, default=Path("bench"), help="folder for bench.md and bench.json")
    bench.add_argument(
        "--data",
        nargs="+",
        metavar="HELD_OUT",
        default=(),
        help="held-out transcripts (files, folders, globs) to measure what the fast graph costs in "
        "perplexity against the reference export; default: the figure `chatbot train` recorded",
    )
    bench.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu (default), or cuda: ours on the cuda-fp16 graph (built when missing), transformers in fp16 "
        "eager and with its static cache, all on the GPU (needs onnxruntime-gpu and torch with CUDA)",
    )
    bench.set_defaults(run=_bench)


def _bench(args: argparse.Namespace) -> int:
    if (args.model_dir is None) == (args.config is None):
        raise ChatbotError(
            "`chatbot bench` takes either MODEL_DIR or --config NAME, not both or neither",
            hint="e.g. `chatbot bench models` or `chatbot bench --config gpt2`",
        )
    try:
        from training.bench import BenchOptions, markdown, run_bench
    except ImportError as error:
        raise ChatbotError(
            f"`chatbot bench` compares against transformers ({error})", hint=TRAIN_EXTRA
        ) from error
    try:
        concurrency = tuple(int(n) for n in args.concurrency.split(","))
    except ValueError as error:
        raise ChatbotError(
            f"--concurrency takes counts separated by commas, e.g. 1,8,32 ({error})"
        ) from error
    counts = (args.prompt_tokens, args.new_tokens, args.runs, args.concurrency_runs, *concurrency)
    if min(counts) < 1:
        raise ChatbotError(
            "--prompt-tokens, --new-tokens, --runs, --concurrency and --concurrency-runs must be at least 1"
        )
    options = BenchOptions(
        prompt_tokens=args.prompt_tokens,
        new_tokens=args.new_tokens,
        runs=args.runs,
        concurrency=concurrency,
        out=args.out,
        concurrency_runs=args.concurrency_runs,
        device=args.device,
        data=tuple(args.data),
    )
    print(markdown(run_bench(args.model_dir, options, progress=_progress, config=args.config)))
    return 0


def _add_eval_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="measure a model on held-out transcripts, next to a retrieval baseline",
        description="Perplexity on the agent turns, ROUGE-L and BLEU of greedy replies against the "
        "agent's, latency per reply, and the same for a TF-IDF retrieval baseline over the training "
        "replies. Prints a markdown table.",
    )
    evaluate.add_argument("model_dir", metavar="MODEL_DIR", type=Path, help="a model folder")
    evaluate.add_argument("data", metavar="DATA", nargs="+", help="test transcripts: files, folders, globs")
    evaluate.add_argument(
        "--train-data",
        metavar="PATH",
        nargs="+",
        default=None,
        help="training transcripts for the baseline (default: the files recorded in card.json)",
    )
    evaluate.add_argument(
        "--max-replies",
        type=int,
        metavar="N",
        default=None,
        help="at most N replies, spread evenly (default: all)",
    )
    evaluate.add_argument("--max-new-tokens", type=int, metavar="N", default=64, help="the reply budget (64)")
    evaluate.add_argument(
        "--system-prompt",
        metavar="TEXT",
        default=None,
        help="for conversations without one (default: the one the model was trained with, if any)",
    )
    evaluate.add_argument("--device", choices=DEVICES, default=None, help="default: $CHATBOT_DEVICE or auto")
    evaluate.add_argument("--json", metavar="OUT.json", type=Path, default=None, help="write every figure")
    evaluate.add_argument("--markdown", metavar="OUT.md", type=Path, default=None, help="write the table")
    evaluate.set_defaults(run=_eval)


def _eval(args: argparse.Namespace) -> int:
    try:
        from training.evaluate import evaluate_files, write_reports

        result = evaluate_files(  # checks the model folder before the slow imports
            args.model_dir,
            args.data,
            train_data=args.train_data,
            max_replies=args.max_replies,
            max_new_tokens=args.max_new_tokens,
            system_prompt=args.system_prompt,
            device=args.device,
            progress=_progress,
        )
    except ImportError as error:
        raise ChatbotError(
            f"`chatbot eval` needs transformers, rouge-score and sacrebleu ({error})", hint=TRAIN_EXTRA
        ) from error
    print(result.to_markdown())
    for path in write_reports(result, json_path=args.json, markdown_path=args.markdown):
        _progress(f"wrote {path}")
    return 0
