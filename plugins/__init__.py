"""Built-in channels. Each registers under the ``chatbot.channels`` entry-point group, like a
third-party channel would, and reaches the bot only through :class:`chatbot.Engine`."""
