"""The conversation store, against real SQLite files (no mocks)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import pytest

import chatbot.store as store_module
from chatbot.errors import InvalidMessage, StoreError, UnknownConversation, UnknownMessage
from chatbot.store import SQLStore, Store, open_store, schema_head, upgrade_store
from chatbot.types import Conversation, Feedback

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "chat.db"


@pytest.fixture
def opener(db_path: Path) -> Iterator[Callable[[], SQLStore]]:
    """Opens the store file (again); every store opened is closed at teardown."""
    opened: list[SQLStore] = []

    def open_again() -> SQLStore:
        opened.append(SQLStore.sqlite(db_path))
        return opened[-1]

    yield open_again
    for store in opened:
        store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, db_path: Path) -> Iterator[SQLStore]:
    """The store under test: a SQLite file, then a database on a real PostgreSQL server."""
    if request.param == "sqlite":
        opened = SQLStore.sqlite(db_path)
    else:
        opened = SQLStore(request.getfixturevalue("postgres_url"))
    yield opened
    opened.close()


def raw_sql(path: Path, sql: str, *params: object) -> list[tuple]:
    """Run SQL on the file directly with sqlite3, outside the store."""
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


# --------------------------------------------------------------------------- conversations


def test_sql_store_implements_the_protocol(store: SQLStore) -> None:
    assert isinstance(store, Store)


def test_open_creates_then_resumes_keeping_what_was_stored(store: SQLStore) -> None:
    created = store.open_conversation("c1", system_prompt="Be kind.", metadata={"channel": "web"})
    assert created == Conversation(
        id="c1",
        created_at=created.created_at,
        system_prompt="Be kind.",
        metadata={"channel": "web"},
    )
    assert created.created_at.tzinfo is not None
    assert created.created_at.utcoffset().total_seconds() == 0
    store.append_message("c1", "user", "hello")

    resumed = store.open_conversation("c1", system_prompt="Be rude.", metadata={"channel": "x"})
    assert resumed.system_prompt == "Be kind."
    assert resumed.metadata == {"channel": "web"}
    assert resumed.created_at == created.created_at
    assert [m.content for m in resumed.messages] == ["hello"]


def test_records_are_copies(store: SQLStore) -> None:
    metadata = {"tags": ["a"]}
    store.open_conversation("c1", metadata=metadata)
    metadata["tags"].append("changed")
    first = store.get_conversation("c1")
    first.metadata["tags"].append("also changed")
    assert store.get_conversation("c1").metadata == {"tags": ["a"]}
    assert isinstance(first.messages, tuple)


def test_conversation_id_must_be_a_non_empty_string(store: SQLStore) -> None:
    with pytest.raises(InvalidMessage, match="non-empty"):
        store.open_conversation("")


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get_conversation("nope"),
        lambda s: s.append_message("nope", "user", "hi"),
        lambda s: s.reset("nope"),
        lambda s: s.transcript("nope"),
        lambda s: s.feedback("nope"),
    ],
    ids=["get", "append", "reset", "transcript", "feedback"],
)
def test_unknown_conversation(store: SQLStore, call: Callable[[SQLStore], object]) -> None:
    with pytest.raises(UnknownConversation, match="open_conversation"):
        call(store)
    assert store.conversation_ids() == []  # nothing was created on the way


def test_conversation_ids_most_recently_updated_first(store: SQLStore) -> None:
    for name in ("a", "b", "c"):
        store.open_conversation(name)
    store.append_message("a", "user", "bump")
    assert store.conversation_ids() == ["a", "c", "b"]
    assert store.conversation_ids(limit=2) == ["a", "c"]
    assert store.conversation_ids(limit=2, offset=2) == ["b"]
    with pytest.raises(ValueError, match="limit"):
        store.conversation_ids(limit=-1)


# --------------------------------------------------------------------------- messages


def test_append_numbers_turns_in_order(store: SQLStore) -> None:
    store.open_conversation("c1")
    store.open_conversation("c2")
    sent = [
        store.append_message("c1", "user", "one"),
        store.append_message("c2", "user", "other"),
        store.append_message("c1", "assistant", "two", meta={"confidence": -0.5, "tokens": 3}),
        store.append_message("c1", "user", "three"),
    ]
    history = store.get_conversation("c1").messages
    assert history == (sent[0], sent[2], sent[3])  # exactly what append returned
    assert [m.seq for m in history] == [1, 2, 3]
    assert store.get_conversation("c2").messages[0].seq == 1
    assert len({m.id for m in sent}) == 4
    assert history[1].meta == {"confidence": -0.5, "tokens": 3}
    assert history[0].meta == {}
    assert all(isinstance(m.created_at, datetime) and m.created_at.tzinfo for m in history)
    assert history[0].created_at <= history[2].created_at <= datetime.now(UTC)


def test_append_rejects_bad_turns(store: SQLStore) -> None:
    store.open_conversation("c1")
    with pytest.raises(InvalidMessage, match="role"):
        store.append_message("c1", "robot", "hi")  # type: ignore[arg-type]
    with pytest.raises(InvalidMessage, match="JSON"):
        store.append_message("c1", "assistant", "hi", meta={"when": datetime.now(UTC)})
    assert store.transcript("c1") == ()


def test_messages_survive_close_and_reopen(opener: Callable[[], SQLStore]) -> None:
    first = opener()
    first.open_conversation("c1", system_prompt="Be brief.")
    sent = [first.append_message("c1", "user", f"turn {i}") for i in range(5)]
    first.close()

    second = opener()
    again = second.get_conversation("c1")
    assert again.messages == tuple(sent)
    assert again.system_prompt == "Be brief."
    assert second.append_message("c1", "user", "more").seq == 6


def test_reset_clears_history_but_keeps_transcript(store: SQLStore) -> None:
    store.open_conversation("c1")
    before = [
        store.append_message("c1", "user", "old"),
        store.append_message("c1", "assistant", "a"),
    ]
    store.reset("c1")
    assert store.get_conversation("c1").messages == ()

    after = store.append_message("c1", "user", "new")
    assert after.seq == 3  # seq keeps counting across resets
    assert store.get_conversation("c1").messages == (after,)
    assert store.transcript("c1") == (*before, after)
    store.reset("c1")
    store.reset("c1")
    assert store.get_conversation("c1").messages == ()
    assert len(store.transcript("c1")) == 3


# --------------------------------------------------------------------------- feedback


def test_feedback_on_a_reply_is_kept_in_full(store: SQLStore) -> None:
    store.open_conversation("c1")
    store.append_message("c1", "user", "hi")
    reply = store.append_message("c1", "assistant", "hello")
    first = store.add_feedback(reply.id, -1, comment="rude")
    second = store.add_feedback(reply.id, 1)
    assert first == Feedback(
        id=first.id,
        message_id=reply.id,
        conversation_id="c1",
        rating=-1,
        comment="rude",
        created_at=first.created_at,
    )
    store.reset("c1")  # feedback outlives resets, like the transcript
    assert store.feedback("c1") == (first, second)  # both kept, oldest first; latest wins


@pytest.mark.parametrize("rating", [0, 2, -2, True, 0.5])
def test_feedback_rating_must_be_plus_or_minus_one(store: SQLStore, rating: object) -> None:
    store.open_conversation("c1")
    reply = store.append_message("c1", "assistant", "hello")
    with pytest.raises(InvalidMessage, match=r"\+1 or -1") as raised:
        store.add_feedback(reply.id, rating)  # type: ignore[arg-type]
    assert isinstance(raised.value, ValueError)
    assert store.feedback("c1") == ()


def test_feedback_only_on_assistant_messages(store: SQLStore) -> None:
    store.open_conversation("c1")
    question = store.append_message("c1", "user", "hi")
    with pytest.raises(InvalidMessage, match="only assistant"):
        store.add_feedback(question.id, 1)
    assert store.feedback("c1") == ()


def test_feedback_on_unknown_message(store: SQLStore) -> None:
    with pytest.raises(UnknownMessage, match="12345"):
        store.add_feedback(12345, 1)


# --------------------------------------------------------------------------- concurrency


def test_many_threads_lose_and_duplicate_nothing(store: SQLStore) -> None:
    threads_n, appends_n = 8, 50
    store.open_conversation("shared")
    for t in range(threads_n):
        store.open_conversation(f"own-{t}")
    errors: list[BaseException] = []
    start = threading.Barrier(threads_n)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(appends_n):
                target = "shared" if i % 2 else f"own-{t}"
                store.append_message(target, "user", f"{t}:{i}")
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []

    shared = store.transcript("shared")
    assert [m.seq for m in shared] == list(range(1, threads_n * appends_n // 2 + 1))
    expected = {f"{t}:{i}" for t in range(threads_n) for i in range(1, appends_n, 2)}
    assert {m.content for m in shared} == expected
    for t in range(threads_n):
        own = store.transcript(f"own-{t}")
        assert [m.seq for m in own] == list(range(1, appends_n // 2 + 1))
        assert [m.content for m in own] == [f"{t}:{i}" for i in range(0, appends_n, 2)]


def test_memory_store_is_shared_between_threads() -> None:
    with SQLStore.memory() as store:
        store.open_conversation("c1")
        workers = [
            threading.Thread(target=store.append_message, args=("c1", "user", f"from {t}")) for t in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert [m.seq for m in store.get_conversation("c1").messages] == [1, 2, 3, 4]
        assert store.get_conversation("c1").messages[0].content.startswith("from ")


KILLED_WRITER = """
import sys
from chatbot.store import SQLStore

store = SQLStore.sqlite(sys.argv[1])
store.open_conversation("k")
n = 0
while True:
    n += 1
    store.append_message("k", "user", f"message {n}")
    print(f"ack {n}", flush=True)
"""


def test_acknowledged_messages_survive_sigkill(
    db_path: Path, tmp_path: Path, opener: Callable[[], SQLStore]
) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", KILLED_WRITER, str(db_path)]
    with (
        open(tmp_path / "writer.err", "w") as err,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env) as proc,
    ):
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(25)]
        assert all(line.startswith("ack ") for line in lines), (tmp_path / "writer.err").read_text()
        os.kill(proc.pid, signal.SIGKILL)
        lines += proc.stdout.read().splitlines(keepends=True)  # acks still in the pipe count too
        assert proc.wait() == -signal.SIGKILL

    acked = [int(line.split()[1]) for line in lines if line.endswith("\n")]
    assert acked == list(range(1, len(acked) + 1))
    stored = {m.content for m in opener().transcript("k")}
    assert {f"message {n}" for n in acked} <= stored
    assert raw_sql(db_path, "PRAGMA integrity_check") == [("ok",)]


# --------------------------------------------------------------------------- schema


def test_wal_mode_is_on(opener: Callable[[], SQLStore], db_path: Path) -> None:
    opener().open_conversation("c1")
    assert raw_sql(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_fresh_database_gets_the_head_revision(opener: Callable[[], SQLStore], db_path: Path) -> None:
    store = opener()
    assert schema_head() == HEAD and store.revision == HEAD and store.revision_before is None
    assert raw_sql(db_path, "SELECT version_num FROM alembic_version") == [(HEAD,)]


def test_newer_database_is_refused(opener: Callable[[], SQLStore], db_path: Path) -> None:
    opener().close()
    raw_sql(db_path, "UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StoreError, match="newer version of chatbot") as raised:
        opener()
    assert "upgrade" in str(raised.value)


HEAD = "0004"  # the newest revision in chatbot/migrations/versions
NEXT = "0005"  # a test's own revision after it


def _revision(folder: Path, body: str) -> Path:
    """A real Alembic revision NEXT after the head, in a folder of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{NEXT}_test.py").write_text(
        "from alembic import op\n"
        "import sqlalchemy as sa\n"
        f"revision = '{NEXT}'\n"
        f"down_revision = '{HEAD}'\n"
        "branch_labels = None\n"
        "depends_on = None\n\n"
        "def upgrade():\n"
        f"    {body}\n\n"
        "def downgrade():\n"
        "    pass\n"
    )
    return folder


ADD_LOCALE = "op.add_column('chatbot_conversations', sa.Column('locale', sa.Text(), nullable=True))"


def _columns(db_path: Path) -> list[str]:
    return [row[1] for row in raw_sql(db_path, "PRAGMA table_info(chatbot_conversations)")]


def test_older_database_is_migrated_in_place(
    opener: Callable[[], SQLStore], db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = opener()
    old.open_conversation("c1", system_prompt="Be kind.")
    sent = old.append_message("c1", "user", "hi")
    old.close()

    monkeypatch.setattr(store_module, "EXTRA_MIGRATION_FOLDERS", [_revision(tmp_path / "rev", ADD_LOCALE)])
    migrated = opener()
    assert (migrated.revision_before, migrated.revision) == (HEAD, NEXT)
    assert migrated.get_conversation("c1").messages == (sent,)
    assert raw_sql(db_path, "SELECT version_num FROM alembic_version") == [(NEXT,)]
    assert "locale" in _columns(db_path)
    migrated.close()

    monkeypatch.undo()  # the older code now meets a newer database
    with pytest.raises(StoreError, match="newer version"):
        opener()


def test_with_upgrades_off_a_database_behind_is_refused_until_chatbot_db_upgrade(
    opener: Callable[[], SQLStore], db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opener().close()
    monkeypatch.setattr(store_module, "EXTRA_MIGRATION_FOLDERS", [_revision(tmp_path / "rev", ADD_LOCALE)])
    monkeypatch.setenv("CHATBOT_STORE_UPGRADE", "0")
    with pytest.raises(
        StoreError, match=f"at schema revision {HEAD}, and this chatbot needs {NEXT}"
    ) as refused:
        opener()
    assert "chatbot db upgrade" in str(refused.value.hint)
    assert "locale" not in _columns(db_path)
    assert upgrade_store(db_path) == (HEAD, NEXT)
    assert opener().revision == NEXT and "locale" in _columns(db_path)


def test_failed_migration_changes_nothing(
    opener: Callable[[], SQLStore], db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = opener()
    old.open_conversation("c1")
    old.close()
    broken = f"{ADD_LOCALE}; op.execute('SELECT * FROM no_such_table')"
    monkeypatch.setattr(store_module, "EXTRA_MIGRATION_FOLDERS", [_revision(tmp_path / "rev", broken)])
    with pytest.raises(StoreError, match="no_such_table"):
        opener()
    monkeypatch.undo()
    assert raw_sql(db_path, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert "locale" not in _columns(db_path)
    assert opener().conversation_ids() == ["c1"]


def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(StoreError, match="not a database") as raised:
        SQLStore.sqlite(notes)
    assert str(notes) in str(raised.value)


# --------------------------------------------------------------------------- opening


def test_sqlite_creates_parent_folders(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "chat.db"
    with SQLStore.sqlite(path) as store:
        store.open_conversation("c1")
    assert path.is_file()


@pytest.mark.parametrize("form", ["path", "str", "url"])
def test_open_store_accepts_paths_and_urls(tmp_path: Path, form: str) -> None:
    path = tmp_path / "chat.db"
    target = {"path": path, "str": str(path), "url": f"sqlite:///{path}"}[form]
    with open_store(target) as store:
        store.open_conversation("c1")
    with open_store(path) as store:
        assert store.conversation_ids() == ["c1"]


def test_open_store_memory() -> None:
    with open_store(":memory:") as store:
        store.open_conversation("c1")
        assert store.conversation_ids() == ["c1"]


def test_bad_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="nosuchdb"):
        open_store("nosuchdb://somewhere/db")


def test_closed_store_refuses_calls(store: SQLStore) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.conversation_ids()


# --------------------------------------------------------------------------- claims and metadata


def test_a_key_is_claimed_once_across_reopening_and_threads(opener: Callable[[], SQLStore]) -> None:
    first = opener()
    assert first.claim("slack:T1:C1:1700000000.000100") is True
    assert first.claim("slack:T1:C1:1700000000.000100") is False
    first.close()
    again = opener()
    assert again.claim("slack:T1:C1:1700000000.000100") is False  # durable
    results: list[bool] = []
    workers = [threading.Thread(target=lambda: results.append(again.claim("race"))) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(results) == [False] * 7 + [True]
    with pytest.raises(InvalidMessage):
        again.claim("")


def test_a_store_from_before_alembic_is_adopted_and_upgraded(
    opener: Callable[[], SQLStore], db_path: Path
) -> None:
    """A version-1 store of the earlier numbered migrations: no claims table, no alembic_version."""
    old = opener()
    old.open_conversation("c1", system_prompt="Be kind.")
    old.append_message("c1", "user", "hi")
    reply = old.append_message("c1", "assistant", "hello!")
    old.add_feedback(reply.id, 1)
    kept = old.transcript("c1"), old.feedback("c1")
    old.close()
    raw_sql(db_path, "DROP TABLE chatbot_claims")
    raw_sql(db_path, "DROP TABLE chatbot_handovers")  # 0003, after the numbered migrations
    raw_sql(db_path, "DROP TABLE chatbot_corrections")  # 0004
    raw_sql(db_path, "DROP TABLE alembic_version")
    raw_sql(db_path, "CREATE TABLE chatbot_schema_version (version INTEGER NOT NULL)")
    raw_sql(db_path, "INSERT INTO chatbot_schema_version VALUES (1)")
    upgraded = opener()
    assert (upgraded.revision_before, upgraded.revision) == ("0001", HEAD)
    assert upgraded.claim("k") is True and (upgraded.transcript("c1"), upgraded.feedback("c1")) == kept
    assert upgraded.get_conversation("c1").system_prompt == "Be kind."
    assert raw_sql(db_path, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    tables = {row[0] for row in raw_sql(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "chatbot_schema_version" not in tables


def test_metadata_is_merged_and_a_none_removes_a_key(store: SQLStore) -> None:
    store.open_conversation("c1", metadata={"channel": "slack", "team": "T1"})
    updated = store.update_metadata("c1", {"paused": True, "team": None})
    assert updated.metadata == {"channel": "slack", "paused": True}
    assert store.get_conversation("c1").metadata == {"channel": "slack", "paused": True}
    with pytest.raises(UnknownConversation):
        store.update_metadata("nope", {"paused": True})
