"""People in the loop, the engine's half: a conversation asked into the queue, taken by one staff
member, answered by them while the bot stays quiet, and handed back. On SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from chatbot import Engine, EngineConfig, GenerationConfig
from chatbot.errors import HandoverError, InvalidMessage, UnknownConversation, WithAPerson
from chatbot.store import SQLStore, open_store

# the tiny model's gibberish is unsure enough to be flagged: these tests ask for a person themselves
SHORT = EngineConfig(generation=GenerationConfig(max_new_tokens=6), handover_below=None)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return str(tmp_path / "conversations.db")


@pytest.fixture
def engine(tiny_model_dir: Path, store_url: str):
    with Engine.from_folder(tiny_model_dir, store=store_url, config=SHORT) as engine:
        yield engine


def test_a_staff_member_takes_answers_and_hands_back(engine: Engine) -> None:
    conversation = engine.start()
    engine.reply(conversation.id, "Where is my order?")
    assert engine.queue() == ()
    asked = engine.request_person(conversation.id)
    assert (asked.state, asked.reason, asked.staff) == ("waiting", "asked", None)
    assert engine.request_person(conversation.id, "again") == asked  # already waiting: unchanged
    assert [h.conversation_id for h in engine.queue()] == [conversation.id]
    assert engine.reply(conversation.id, "Hello?").text is not None  # waiting: the bot still answers

    taken = engine.take(conversation.id, "ada")
    assert (taken.state, taken.staff) == ("taken", "ada")
    with pytest.raises(WithAPerson, match="a person from the support team has this conversation"):
        engine.reply(conversation.id, "Is anyone there?")
    answer = engine.person_reply(conversation.id, "ada", "Hi, I'm Ada. Your parcel leaves today.")
    assert answer.role == "assistant" and answer.meta["author"] == "person" and answer.meta["staff"] == "ada"
    turns = [(m.role, m.content) for m in engine.get(conversation.id).messages[-2:]]
    assert turns == [("user", "Is anyone there?"), ("assistant", "Hi, I'm Ada. Your parcel leaves today.")]

    returned = engine.hand_back(conversation.id, "ada")
    assert returned.state == "returned" and engine.queue() == ()
    assert engine.reply(conversation.id, "Thanks!").text is not None  # the bot answers again
    assert engine.request_person(conversation.id, "asked again").state == "waiting"  # a new request


def test_one_person_at_a_time_and_every_wrong_step_says_why(engine: Engine) -> None:
    conversation = engine.start()
    with pytest.raises(HandoverError, match="not waiting for a person"):
        engine.take(conversation.id, "ada")
    engine.request_person(conversation.id)
    with pytest.raises(HandoverError, match="nobody has taken it"):
        engine.person_reply(conversation.id, "ada", "hello")
    engine.take(conversation.id, "ada")
    assert engine.take(conversation.id, "ada").staff == "ada"  # taking it again keeps it
    with pytest.raises(HandoverError, match="ada has conversation") as held:
        engine.take(conversation.id, "grace")
    assert "hand it back" in str(held.value.hint)
    with pytest.raises(HandoverError, match="ada has it"):
        engine.person_reply(conversation.id, "grace", "I'll take this")
    with pytest.raises(HandoverError, match="ada has conversation"):
        engine.hand_back(conversation.id, "grace")
    before = engine.get(conversation.id).messages
    for bad in ("", "   ", "x" * (engine.config.max_message_chars + 1)):
        with pytest.raises(InvalidMessage):
            engine.person_reply(conversation.id, "ada", bad)
    with pytest.raises(InvalidMessage, match="staff member's name"):
        engine.take(conversation.id, "")
    assert engine.get(conversation.id).messages == before  # nothing stored
    with pytest.raises(UnknownConversation):
        engine.request_person("no-such-conversation")


def test_a_flagged_reply_puts_the_conversation_in_the_queue(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = EngineConfig(generation=GenerationConfig(max_new_tokens=6), handover_below=0.0)  # flags all
    with Engine.from_folder(tiny_model_dir, store=tmp_path / "c.db", config=config) as engine:
        conversation = engine.start()
        assert engine.reply(conversation.id, "What's the weather like?").handover
        (queued,) = engine.queue()
        assert (queued.conversation_id, queued.state, queued.reason) == (
            conversation.id,
            "waiting",
            "flagged",
        )


def test_staff_racing_for_one_conversation_one_wins(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(4)]  # as four replicas would
    stores[0].open_conversation("c1")
    stores[0].request_handover("c1", "asked")
    won: list[str] = []
    lost: list[str] = []
    barrier = threading.Barrier(len(stores))

    def take(store: SQLStore, staff: str) -> None:
        barrier.wait()
        try:
            store.take_handover("c1", staff)
            won.append(staff)
        except HandoverError as error:
            lost.append(str(error))

    threads = [threading.Thread(target=take, args=(s, f"staff-{i}")) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(lost) == 3
    assert all(f"{won[0]} has conversation c1" in message for message in lost)
    assert stores[1].handover("c1").staff == won[0]  # type: ignore[union-attr]
    for store in stores:
        store.close()


def test_a_typed_request_for_a_person_joins_the_queue(engine: Engine) -> None:
    conversation = engine.start()
    engine.reply(conversation.id, "Where is my order?")
    assert engine.queue() == ()
    assert engine.reply(conversation.id, "Can I talk to a human please?").text is not None  # still answered
    (queued,) = engine.queue()
    assert (queued.conversation_id, queued.state, queued.reason) == (conversation.id, "waiting", "asked")


@pytest.mark.parametrize(
    ("text", "asks"),
    [
        ("Can I talk to a human?", True),
        ("I want to speak with a real person", True),
        ("connect me to an agent", True),
        ("human, please", True),
        ("Where is my order?", False),
        ("I talked to my friend about it", False),
        ("the agent who delivered it was rude", False),
    ],
)
def test_what_counts_as_asking_for_a_person(text: str, asks: bool) -> None:
    from chatbot.engine import asks_for_a_person

    assert asks_for_a_person(text) is asks


def test_a_message_for_a_person_is_stored_without_an_answer(engine: Engine) -> None:
    conversation = engine.start()
    with pytest.raises(HandoverError, match="nobody is asked into"):
        engine.message_for_a_person(conversation.id, "Hello?")
    engine.request_person(conversation.id)
    waiting = engine.message_for_a_person(conversation.id, "Is anyone coming?")  # waiting: stored too
    assert (waiting.role, waiting.content, waiting.meta) == ("user", "Is anyone coming?", {"to": "person"})
    engine.take(conversation.id, "ada")
    engine.message_for_a_person(conversation.id, "Thanks, Ada", client="slack:U1")
    with pytest.raises(InvalidMessage):
        engine.message_for_a_person(conversation.id, "   ")
    assert [m.content for m in engine.get(conversation.id).messages] == ["Is anyone coming?", "Thanks, Ada"]
    engine.hand_back(conversation.id, "ada")
    with pytest.raises(HandoverError, match="nobody is asked into"):
        engine.message_for_a_person(conversation.id, "and now?")
