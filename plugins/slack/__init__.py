"""The Slack channel (slack-bolt): ``chatbot serve --channel slack MODEL_DIR``.

Registered under the ``chatbot.channels`` entry points like any third-party channel, and
imported only when chosen, so the web chat never imports the Slack SDK.
"""

from __future__ import annotations

from plugins.slack.channel import SlackChannel

__all__ = ["SlackChannel"]
