"""One chat template, two renderers: the engine (jinja2 + tokenizers) and training (transformers)
must produce the same token ids for every conversation."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatbot import ModelFolder
from chatbot.template import DEFAULT_CHAT_TEMPLATE, ChatTemplate

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=80)
HANDPICKED = [
    "Hello!",
    "Où est ma commande ? Ça fait 3 semaines 😡",
    "注文番号は 12345 です",
    "👩‍👩‍👧‍👦 family pack + 🇩🇪 flag",
    "  leading and trailing spaces  ",
    "line one\nline two\r\n\ttabbed",
    "",
    "x" * 600,
]


def conversations() -> st.SearchStrategy[list[dict[str, str]]]:
    turn = st.tuples(st.sampled_from(["user", "assistant"]), st.one_of(TEXT, st.sampled_from(HANDPICKED)))
    system = st.one_of(st.none(), st.just(""), TEXT, st.just("You are a helpful agent. " * 40))

    def build(parts: tuple[str | None, list[tuple[str, str]]]) -> list[dict[str, str]]:
        sys_prompt, turns = parts
        head = [] if sys_prompt is None else [{"role": "system", "content": sys_prompt}]
        return head + [{"role": r, "content": c} for r, c in turns]

    return st.tuples(system, st.lists(turn, min_size=1, max_size=12)).map(build)


@pytest.fixture(scope="module")
def both(tiny_model_dir):
    from transformers import AutoTokenizer

    return ModelFolder(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=conversations(), generation_prompt=st.booleans())
def test_engine_and_transformers_give_identical_token_ids(both, messages, generation_prompt):
    folder, hf = both
    engine_text = folder.template.render(messages, add_generation_prompt=generation_prompt)
    hf_text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    hf_ids = hf.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=False
    )
    assert engine_text == hf_text
    assert folder.encode(engine_text) == list(hf_ids)


@pytest.mark.parametrize("content", HANDPICKED)
def test_handpicked_texts_round_trip_through_the_tokenizer(both, content):
    folder, _ = both
    ids = folder.encode(content)
    assert folder.tokenizer.decode(ids, skip_special_tokens=False) == content


def test_the_template_shape():
    rendered = ChatTemplate(DEFAULT_CHAT_TEMPLATE).render(
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}]
    )
    assert rendered == "<|system|>\nBe kind.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"


def test_an_unknown_role_is_refused():
    from jinja2.exceptions import TemplateError

    with pytest.raises(TemplateError, match="Unknown role customer"):
        ChatTemplate(DEFAULT_CHAT_TEMPLATE).render([{"role": "customer", "content": "Hi"}])
