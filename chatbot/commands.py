"""Commands of the `chatbot` command line, discovered through a Python entry-point group.

A command registers a callable under the ``chatbot.commands`` entry-point group; the commands
that need the training tools register exactly as a third party would register its own::

    [project.entry-points."chatbot.commands"]
    train = "training.commands:train"

The callable receives the :class:`CommandSet` of the parser being built and adds its command
with :meth:`CommandSet.add`, setting ``run`` (``args -> exit code``) as the parser's default::

    def hello(commands: CommandSet) -> None:
        parser = commands.add("hello", help="say hello")
        parser.set_defaults(run=lambda args: print("hello") or 0)

It runs whenever the command line starts, so it imports nothing heavy: a command imports what
it needs inside ``run`` and raises :class:`~chatbot.errors.ChatbotError` with what to install
when that is missing. The helpers below (the model and reply options, the engine settings they
make, serving a model on a channel) are the ones the built-in commands use.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from chatbot import settings
from chatbot.channels import Channel, find_channel
from chatbot.engine import Engine, EngineConfig
from chatbot.errors import ChatbotError
from chatbot.generation import DEVICES
from chatbot.types import GenerationConfig

GROUP = "chatbot.commands"
TRAIN_EXTRA = "install the training tools with `pip install 'chatbot[train]'`"

Subparsers = argparse._SubParsersAction  # argparse names no public type for it


@dataclass
class CommandSet:
    """The commands of the parser being built, and the channel whose flags a command takes."""

    subparsers: Subparsers[argparse.ArgumentParser]
    channel_flags: dict[str, type[Channel]] = field(default_factory=dict)

    def add(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A new command ``name`` (``kwargs`` as for ``add_parser``: ``help``, ``description``)."""
        return self.subparsers.add_parser(name, **kwargs)

    def add_channel_flags(self, parser: argparse.ArgumentParser, name: str) -> None:
        """The chosen channel's own flags, for a command that serves on a channel."""
        if name in self.channel_flags:
            self.channel_flags[name].add_arguments(parser)


def register_plugins(commands: CommandSet) -> None:
    """Every command registered under :data:`GROUP`, in name order. One that cannot be loaded is
    reported on standard error and left out; the others still work."""
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        try:
            entry.load()(commands)
        except Exception as error:  # a third party's plugin may fail in any way
            print(
                f"warning: the command {entry.name!r} ({entry.value}) could not be loaded: "
                f"{type(error).__name__}: {error}",
                file=sys.stderr,
            )


def progress(message: str) -> None:
    """What a command says while it works: one line on standard error."""
    print(message, file=sys.stderr, flush=True)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """MODEL_DIR, where conversations are kept, the device and graph, and the reply options."""
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
        "cpu-int4, cpu-fp32 (default: $CHATBOT_VARIANT or auto)",
    )
    add_generation_options(parser)


def add_generation_options(parser: argparse.ArgumentParser) -> None:
    """The reply options and limits; :func:`engine_config` reads them back."""
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
    group.add_argument(
        "--handover-unlike-below",
        type=float,
        default=config.handover_unlike_below,
        help="similarity (0-1) of a message to the nearest training customer turn under which it is "
        "handed to a person as out of scope; needs the folder's scope.npz (default: "
        f"{config.handover_unlike_below}; 0 turns it off)",
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


def engine_config(args: argparse.Namespace) -> EngineConfig:
    """The engine settings that :func:`add_generation_options`' flags give."""
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
        handover_unlike_below=args.handover_unlike_below or None,
        conversation_rate=args.rate_limit or None,
        client_rate=args.client_rate_limit or None,
        max_concurrent_replies=args.max_concurrent_replies or None,
        queue_timeout_s=args.queue_timeout,
    )


def serve(args: argparse.Namespace) -> int:
    """Serve ``args.model_dir`` on ``args.channel`` until the channel stops; its exit code."""
    channel = find_channel(args.channel).load()
    store = args.store or settings.store_location()
    with Engine.from_folder(
        args.model_dir,
        store=store,
        device=getattr(args, "device", None),
        variant=getattr(args, "variant", None),
        config=engine_config(args),
    ) as engine:
        return channel(engine, args).run()
