"""The `chatbot` command.

The core's commands (chat, serve, plugins, models, feedback, db, config) are here; every other
command registers itself under the ``chatbot.commands`` entry points (:mod:`chatbot.commands`),
the training tools' among them (``training.commands``), so this package never imports
``training``. Channels are found through their own entry points, never by importing ``plugins``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from chatbot import settings
from chatbot.channels import Channel, available_channels, find_channel
from chatbot.commands import (
    CommandSet,
    add_model_options,
    progress,
    register_plugins,
    serve,
)
from chatbot.errors import ChannelError, ChatbotError, StoreError
from chatbot.feedback import ExportOptions, export_feedback, export_feedback_file, parse_since
from chatbot.logs import configure as configure_logging
from chatbot.settings import apply_config_file
from chatbot.store import display_name, open_store
from chatbot.versions import ModelVersions, VersionInfo, no_versions_error

RESTART_NOTE = "a running server keeps the version it started with: restart it to serve this one"
# The channel whose flags a command takes when no --channel says: `chat` is the terminal, and
# `demo` (registered by training.commands) serves the web chat.
DEFAULT_CHANNELS = {"chat": "terminal", "demo": "web"}
CHANNEL_COMMANDS = ("chat", "serve", "demo")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 error, 2 usage)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(channel_flags=_chosen_channel(args_list))
        args = parser.parse_args(args_list)
        apply_config_file()  # under the real environment: a variable already set wins
        # a server logs each reply; the terminal chat keeps its screen for the conversation
        serving = getattr(args, "serves", False) and getattr(args, "channel", "") != "terminal"
        configure_logging(chatbot_level=logging.INFO if serving else logging.WARNING)
        return int(args.run(args))
    except ChatbotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _chosen_channel(argv: list[str]) -> dict[str, type[Channel]]:
    """The channel whose flags the command needs: ``--channel``, else the command's default."""
    if argv[:1] not in [[name] for name in CHANNEL_COMMANDS]:
        return {}
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--channel", default=DEFAULT_CHANNELS.get(argv[0]))
    name = DEFAULT_CHANNELS["chat"] if argv[0] == "chat" else pre.parse_known_args(argv[1:])[0].channel
    return {argv[0]: find_channel(name).load()} if name else {}


def build_parser(*, channel_flags: dict[str, type[Channel]] | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``channel_flags`` maps a command to the channel whose flags it takes."""
    parser = argparse.ArgumentParser(
        prog="chatbot",
        description="Fine-tune GPT-2 on support transcripts and serve it with ONNX Runtime.",
        epilog="Run `chatbot COMMAND --help` for a command's options.",
    )
    parser.set_defaults(run=_usage(parser))
    commands = CommandSet(parser.add_subparsers(title="commands", metavar="COMMAND"), channel_flags or {})

    chat = commands.add("chat", help="talk to a model in the terminal")
    add_model_options(chat)
    commands.add_channel_flags(chat, "chat")
    chat.set_defaults(run=serve, channel="terminal", serves=True)

    serve_command = commands.add("serve", help="serve a model on a channel (see `chatbot plugins`)")
    serve_command.add_argument("--channel", required=True, help="the channel to serve on, e.g. terminal")
    add_model_options(serve_command)
    commands.add_channel_flags(serve_command, "serve")
    serve_command.set_defaults(run=serve, serves=True)

    plugins = commands.add("plugins", help="list the installed channels")
    plugins.set_defaults(run=_plugins)

    _add_models_commands(commands)
    _add_feedback_commands(commands)
    _add_db_commands(commands)
    _add_config_command(commands)
    register_plugins(commands)  # train, export, eval, bench, demo (training.commands), and others'
    return parser


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


def _add_config_command(commands: CommandSet) -> None:
    config = commands.add(
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
    rows = describe(flags, show_store=display_name)
    width = max(len(name) for name, _, _ in rows)
    used = config_path()
    print(f"config file: {used if used else 'none (set $CHATBOT_CONFIG or create ./chatbot.toml)'}")
    for name, value, source in rows:
        print(f"{name:<{width}}  {value or '(unset)'}  [{source}]")
    return 0


def _add_db_commands(commands: CommandSet) -> None:
    db = commands.add("db", help="the conversation store's schema: show it, upgrade it")
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

    location = args.store or settings.store_location()
    before, after = upgrade_store(location)
    shown = display_name(location)
    if before == after:
        print(f"{shown}: schema at revision {after}, the newest; nothing to do")
    else:
        print(f"{shown}: schema upgraded from revision {before or '(empty)'} to {after}")
    return 0


def _db_status(args: argparse.Namespace) -> int:
    from chatbot.store import schema_head, store_revision

    location = _existing_store(args.store or settings.store_location())
    current, head = store_revision(location), schema_head()
    state = "up to date" if current == head else "behind: run `chatbot db upgrade`"
    print(f"{display_name(location)}: schema revision {current or '(empty)'}, newest {head} ({state})")
    return 0 if current == head else 1


def _add_models_commands(commands: CommandSet) -> None:
    models = commands.add("models", help="list model versions, switch to one, roll back")
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


def _add_feedback_commands(commands: CommandSet) -> None:
    feedback = commands.add("feedback", help="turn rated conversations into training data")
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
    return ModelVersions(root=args.root or settings.models_root())


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
    progress(RESTART_NOTE)
    return 0


def _models_rollback(args: argparse.Namespace) -> int:
    versions = _versions(args)
    before = versions.current()
    info = versions.rollback()  # raises when there is no current version
    print(f"rolled back from {before.version if before else 'none'} to {_short(info)}")
    progress(RESTART_NOTE)
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
    with open_store(_existing_store(args.store or settings.store_location())) as store:
        if args.out is None:
            report = export_feedback(store, sys.stdout, options)
        else:
            report = export_feedback_file(store, args.out, options)
    progress(report.summary() + (f" -> {args.out}" if args.out else ""))
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
