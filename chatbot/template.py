"""The chat template: one Jinja text, stored in the model folder, used by training and serving.

Training renders conversations with transformers' ``apply_chat_template``; the engine renders
the live history with :class:`ChatTemplate`, which compiles the same text the way transformers
does (a sandboxed environment with ``trim_blocks`` and ``lstrip_blocks``), so both produce the
same string and therefore the same token ids (``tests/test_template.py`` proves it).

The default template writes each turn as ``<|role|>\\n{content}<|end|>\\n``; the generation prompt
opens an assistant turn with ``<|assistant|>\\n``. The model ends its reply with ``<|end|>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from chatbot.errors import ModelFolderError

SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
END_OF_TURN = "<|end|>"
END_OF_TEXT = "<|endoftext|>"  # GPT-2's own document separator; bos, eos and pad
SPECIAL_TOKENS = (END_OF_TEXT, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_OF_TURN)

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role ' ~ message['role'] ~ ': use system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' ~ message['role'] ~ '|>\n' ~ message['content'] ~ '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    """A compiled chat template.

    >>> ChatTemplate(DEFAULT_CHAT_TEMPLATE).render([{"role": "user", "content": "Hi"}])
    '<|user|>\\nHi<|end|>\\n<|assistant|>\\n'
    """

    def __init__(self, source: str, *, special_tokens: Mapping[str, str] | None = None) -> None:
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _raise_exception
        try:
            self._template = env.from_string(source)
        except TemplateError as error:
            raise ModelFolderError(
                f"the chat template does not compile: {error}",
                hint="fix 'chat_template' in tokenizer_config.json",
            ) from error
        self.source = source
        # bos_token, eos_token... as transformers passes them to the template.
        self._special = dict(special_tokens or {})

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages`` (dicts with ``role`` and ``content``)."""
        return self._template.render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **self._special,
        )
