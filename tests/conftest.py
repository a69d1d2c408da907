"""Fixtures for this suite beyond the tiny models of training.pytest_plugin: a PostgreSQL server
and a headless browser."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from postgres_server import PostgresServer, find_bindir
from web_served import browser  # noqa: F401 (a fixture: the headless browser of the web tests)


def _postgres_required() -> bool:
    return os.environ.get("CHATBOT_POSTGRES_TESTS") == "required" or bool(os.environ.get("CI"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (skipped where it cannot run, unless required)."""
    reason = None
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL's binaries are missing (`make test` installs Debian's postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        reason = "psycopg is missing: pip install 'chatbot[postgres]'"
    if reason is not None:
        if _postgres_required():
            pytest.fail(f"the PostgreSQL tests must run here: {reason}")
        pytest.skip(reason)
    assert bindir is not None
    server = PostgresServer(bindir)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server (a SQLAlchemy URL)."""
    return postgres_server.new_database()
