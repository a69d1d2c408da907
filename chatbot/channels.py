"""Channels: how the bot reaches people. Discovered through a Python entry-point group.

A channel is a class registered under the ``chatbot.channels`` entry-point group, built-in ones
exactly as a third party would register theirs::

    [project.entry-points."chatbot.channels"]
    terminal = "plugins.terminal:TerminalChannel"

It receives the :class:`~chatbot.engine.Engine` (its only way into the bot) and the options
parsed from its own command-line flags, and serves until it is told to stop. Channels are
imported only when chosen, so the web chat never imports the Slack SDK.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, ClassVar

from chatbot.engine import Engine
from chatbot.errors import ChannelError

GROUP = "chatbot.channels"


class Channel(ABC):
    """Base class of a channel plugin.

    >>> class Echo(Channel):                                         # doctest: +SKIP
    ...     summary = "answers on standard output"
    ...     def run(self) -> int:
    ...         conversation = self.engine.start()
    ...         print(self.engine.reply(conversation.id, input()).text)
    ...         return 0
    """

    summary: ClassVar[str] = ""  # one line for `chatbot plugins`

    def __init__(self, engine: Engine, options: argparse.Namespace) -> None:
        self.engine = engine
        self.options = options

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the channel's own flags to ``chatbot serve --channel NAME`` (none by default)."""
        return None  # an optional hook, not an abstract method

    @abstractmethod
    def run(self) -> int:
        """Serve until stopped; return the process exit code."""


@dataclass(frozen=True)
class ChannelInfo:
    """A registered channel, known without importing it."""

    name: str
    target: str  # "module:attribute"
    distribution: str  # the installed package that registers it

    def load(self) -> type[Channel]:
        """Import the channel class; a missing dependency gives an error saying what to install."""
        try:
            loaded: Any = _entry_point(self).load()
        except ImportError as error:
            raise ChannelError(
                f"channel {self.name!r} ({self.target}) cannot be imported: {error}",
                hint=f"install its extra, e.g. `pip install 'chatbot[{self.name}]'`",
            ) from error
        if not (isinstance(loaded, type) and issubclass(loaded, Channel)):
            raise ChannelError(f"channel {self.name!r} ({self.target}) is not a Channel subclass")
        return loaded


def _entry_point(info: ChannelInfo) -> EntryPoint:
    return next(ep for ep in entry_points(group=GROUP) if ep.name == info.name)


def available_channels() -> list[ChannelInfo]:
    """Every registered channel, sorted by name (nothing is imported)."""
    found = {
        ep.name: ChannelInfo(ep.name, ep.value, ep.dist.name if ep.dist else "?")
        for ep in entry_points(group=GROUP)
    }
    return [found[name] for name in sorted(found)]


def find_channel(name: str) -> ChannelInfo:
    """The registered channel called ``name``."""
    channels = available_channels()
    for info in channels:
        if info.name == name:
            return info
    known = ", ".join(c.name for c in channels) or "none"
    raise ChannelError(
        f"no channel named {name!r} is installed (installed: {known})",
        hint="`chatbot plugins` lists them; a channel registers under the 'chatbot.channels' entry points",
    )
