"""The web chat channel (Gradio): ``chatbot serve --channel web MODEL_DIR``.

Registered under the ``chatbot.channels`` entry points like any third-party channel, and
imported only when chosen, so serving in the terminal or in Slack never imports Gradio.
"""

from __future__ import annotations

from plugins.web.channel import WebChannel

__all__ = ["WebChannel"]
