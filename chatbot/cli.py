"""The `chatbot` command.

The command line is the composition root: it is the one place in ``chatbot`` allowed to reach
into ``training`` (lazily, for `export` and `demo`), and it finds channels through their entry
points, never by importing ``plugins``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from chatbot import paths
from chatbot.channels import Channel, available_channels, find_channel
from chatbot.engine import Engine, EngineConfig
from chatbot.errors import ChannelError, ChatbotError
from chatbot.generation import DEVICES
from chatbot.types import GenerationConfig

TRAIN_EXTRA = "install the training tools with `pip install 'chatbot[train]'`"

# Commands that later releases fill in: shown in the help so users see where the tool is going.
PLANNED = {
    "train": "fine-tune a model on support transcripts",
    "eval": "measure a model on held-out transcripts",
    "bench": "measure speed and memory against transformers",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 error, 2 usage)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(channel_flags=_chosen_channel(args_list))
        args = parser.parse_args(args_list)
        return int(args.run(args))
    except ChatbotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _chosen_channel(argv: list[str]) -> dict[str, type[Channel]]:
    """The channel whose flags the command needs: `chat` is the terminal, `serve` names one."""
    if argv[:1] in (["chat"], ["demo"]):
        return {argv[0]: find_channel("terminal").load()}
    if argv[:1] == ["serve"]:
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--channel")
        name = pre.parse_known_args(argv[1:])[0].channel
        return {"serve": find_channel(name).load()} if name else {}
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
    export.set_defaults(run=_export)

    plugins = commands.add_parser("plugins", help="list the installed channels")
    plugins.set_defaults(run=_plugins)

    demo = commands.add_parser("demo", help="chat with a small default model, built offline")
    demo.add_argument("--rebuild", action="store_true", help="build the default model again")
    _add_generation_options(demo)
    if "demo" in flags:
        flags["demo"].add_arguments(demo)
    demo.set_defaults(run=_demo, channel="terminal")

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
    _add_generation_options(parser)


def _add_generation_options(parser: argparse.ArgumentParser) -> None:
    defaults, config = GenerationConfig(), EngineConfig()
    group = parser.add_argument_group("replies")
    group.add_argument("--system-prompt", default=None, help="system prompt for new conversations")
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
    )


def _serve(args: argparse.Namespace) -> int:
    channel = find_channel(args.channel).load()
    store = args.store or paths.default_store()
    with Engine.from_folder(
        args.model_dir, store=store, device=getattr(args, "device", None), config=_engine_config(args)
    ) as engine:
        return channel(engine, args).run()


def _export(args: argparse.Namespace) -> int:
    try:
        from training.export import export_onnx
    except ImportError as error:
        raise ChatbotError(
            f"`chatbot export` needs PyTorch and optimum ({error})", hint=TRAIN_EXTRA
        ) from error
    parity = export_onnx(args.model_dir, tolerance=args.tolerance, progress=_progress)
    print(f"exported {args.model_dir / 'onnx' / 'model.onnx'}")
    diff, tolerance = parity["max_abs_diff"], parity["tolerance"]
    print(f"parity: max |ONNX - PyTorch| logit = {diff:.2e} (tolerance {tolerance:.0e})")
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
    folder = paths.cache_home() / "models" / "demo"
    if args.rebuild or not (folder / "card.json").is_file():
        try:
            from training.tiny import build_tiny_model
        except ImportError as error:
            raise ChatbotError(
                f"building the demo model needs PyTorch ({error})", hint=TRAIN_EXTRA
            ) from error
        _progress(f"building the demo model in {folder} (once; later starts reuse it)")
        build_tiny_model(folder, name="demo")
    _progress(
        "note: this demo model has random weights, so its replies are gibberish; it shows the "
        "whole path (template, store, ONNX Runtime, streaming). Train a real one with `chatbot train`."
    )
    args.model_dir, args.store, args.device = folder, paths.default_store(), None
    return _serve(args)


def _planned(name: str) -> Callable[[argparse.Namespace], int]:
    def run(_: argparse.Namespace) -> int:
        print(f"`chatbot {name}` is not in this version yet: {PLANNED[name]}.", file=sys.stderr)
        return 2

    return run


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
