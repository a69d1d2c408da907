"""Several replicas on one PostgreSQL store: a real server, real processes (no mocks).

The store's contract tests run on PostgreSQL too (``tests/test_store.py``, ``[postgres]``); these
are the cases only several processes sharing one database have.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from postgres_server import PostgresServer, find_bindir
from sqlalchemy import create_engine, text

from chatbot import Engine, StoreError
from chatbot.store import SQLStore, metadata_obj, schema_head

SPAWN = multiprocessing.get_context("spawn")  # a replica is a fresh interpreter, not a fork


def _replica(url: str, barrier: Any, action: str, results: Any) -> None:
    """One replica process: open the store, wait for the others, then act at the same moment."""
    store = SQLStore(url)
    barrier.wait(timeout=60)
    try:
        if action == "open":
            results.put(store.revision)
        elif action == "claim":
            results.put([store.claim("slack:T1:Ev0001") for _ in range(4)])
        elif action == "append":
            results.put([store.append_message("c1", "user", f"turn {i}").seq for i in range(20)])
    finally:
        store.close()


def _run_replicas(url: str, action: str, count: int) -> list[Any]:
    barrier, results = SPAWN.Barrier(count), SPAWN.Queue()
    processes = [SPAWN.Process(target=_replica, args=(url, barrier, action, results)) for _ in range(count)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return outcomes


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_migrations_build_exactly_the_tables_the_code_uses(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path}/c.db"
    SQLStore(url).close()
    engine = create_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata_obj) == []
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == schema_head()
    engine.dispose()


def test_replicas_starting_together_on_an_empty_database_migrate_it_once(postgres_url: str) -> None:
    assert _run_replicas(postgres_url, "open", 3) == [schema_head()] * 3


def test_two_replicas_handed_the_same_event_answer_it_exactly_once(postgres_url: str) -> None:
    SQLStore(postgres_url).close()
    claims = [claim for outcome in _run_replicas(postgres_url, "claim", 3) for claim in outcome]
    assert Counter(claims) == {True: 1, False: 11}


def test_replicas_appending_to_one_conversation_lose_and_repeat_nothing(postgres_url: str) -> None:
    with SQLStore(postgres_url) as store:
        store.open_conversation("c1")
    seqs = sorted(seq for outcome in _run_replicas(postgres_url, "append", 3) for seq in outcome)
    assert seqs == list(range(1, 61))
    with SQLStore(postgres_url) as store:
        assert len(store.transcript("c1")) == 60


def test_a_conversation_started_on_one_replica_continues_on_another(
    tiny_model_dir: Path, postgres_url: str
) -> None:
    with Engine.from_folder(tiny_model_dir, store=postgres_url) as first:
        first.start("web:visitor-1")
        opening = first.reply("web:visitor-1", "Where is my parcel?")
    with Engine.from_folder(tiny_model_dir, store=postgres_url) as second:
        follow_up = second.reply("web:visitor-1", "It was order 1234.")
        turns = second.get("web:visitor-1").messages
    assert [(t.role, t.content) for t in turns] == [
        ("user", "Where is my parcel?"),
        ("assistant", opening.text),
        ("user", "It was order 1234."),
        ("assistant", follow_up.text),
    ]


def _chatbot(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chatbot", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_chatbot_db_upgrade_and_status_name_the_store_without_its_password(postgres_url: str) -> None:
    url = postgres_url.replace("chatbot@", "chatbot:s3cret-pw@")  # the server trusts any password
    before = _chatbot("db", "status", "--store", url)
    assert (
        before.returncode == 1
        and "revision (empty)" in before.stdout
        and "chatbot db upgrade" in before.stdout
    )
    upgraded = _chatbot("db", "upgrade", "--store", url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from revision (empty) to {schema_head()}" in upgraded.stdout
    again = _chatbot("db", "upgrade", "--store", url)
    assert "nothing to do" in again.stdout
    after = _chatbot("db", "status", "--store", url)
    assert after.returncode == 0 and "up to date" in after.stdout
    for done in (before, upgraded, again, after):
        assert "s3cret-pw" not in done.stdout + done.stderr and "***" in done.stdout


def test_while_the_database_is_down_replies_fail_clearly_and_service_resumes_by_itself(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    bindir = find_bindir()
    assert bindir is not None
    server = PostgresServer(bindir)  # its own server: this test stops it
    try:
        with Engine.from_folder(tiny_model_dir, store=server.new_database()) as engine:
            engine.start("c1")
            engine.reply("c1", "Where is my parcel?")
            server.pause()
            started = time.monotonic()
            with pytest.raises(StoreError, match="conversation store"):
                engine.reply("c1", "Are you there?")
            assert time.monotonic() - started < 15  # a clear error, not a hang
            assert engine.ready() and "store" in engine.ready()[0]
            server.resume()
            assert engine.ready() == []
            engine.reply("c1", "Hello again")
            turns = [m.content for m in engine.get("c1").messages if m.role == "user"]
            assert turns == ["Where is my parcel?", "Hello again"]  # the failed turn was never acknowledged
    finally:
        server.stop()
