"""The conversation store: conversations, their turns and the feedback users gave.

The engine depends only on the :class:`Store` protocol. :class:`SQLStore` implements it with
SQLAlchemy Core, so the same SQL serves a SQLite file (one process, the default) and later
PostgreSQL (several replicas). Every public write is one transaction, committed when the method
returns; records handed out are frozen copies (see :mod:`chatbot.types`).

Nothing is ever deleted: :meth:`Store.reset` starts a new *epoch* of a conversation, so the
history the engine sees starts over while :meth:`Store.transcript` still returns every turn.

The schema is versioned by Alembic (``chatbot/migrations``), the same revisions for SQLite and
PostgreSQL. Opening a store applies the revisions the database has not seen yet, unless
``CHATBOT_STORE_UPGRADE=0`` (then it refuses a database that is behind and ``chatbot db
upgrade`` applies them); a database written by a newer version is always refused. On
PostgreSQL an advisory lock makes replicas that start together migrate one after the other.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, CursorResult, make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from chatbot import settings
from chatbot.errors import HandoverError, InvalidMessage, StoreError, UnknownConversation, UnknownMessage
from chatbot.types import (
    OPEN_HANDOVERS,
    ROLES,
    Conversation,
    Correction,
    Feedback,
    Handover,
    HandoverState,
    Message,
    Role,
)

__all__ = [
    "SQLStore",
    "Store",
    "display_name",
    "open_store",
    "schema_head",
    "store_revision",
    "upgrade_store",
]

BUSY_TIMEOUT_MS = 10_000  # how long a SQLite writer waits for another process's lock
_WRITE = "chatbot_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)


@runtime_checkable
class Store(Protocol):
    """What the engine needs from a conversation store."""

    def open_conversation(
        self,
        conversation_id: str,
        *,
        system_prompt: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Conversation:
        """Start a conversation, or resume it (then the stored prompt and metadata are kept)."""
        ...

    def get_conversation(self, conversation_id: str) -> Conversation:
        """A conversation with its current history (since the last reset), ordered by seq."""
        ...

    def append_message(
        self, conversation_id: str, role: Role, content: str, *, meta: dict[str, Any] | None = None
    ) -> Message:
        """Store one turn; it is durable when this returns."""
        ...

    def add_feedback(self, message_id: int, rating: int, *, comment: str | None = None) -> Feedback:
        """Record a +1/-1 rating of an assistant reply (every rating is kept)."""
        ...

    def feedback(self, conversation_id: str) -> tuple[Feedback, ...]:
        """All feedback of a conversation, oldest first (the latest per message wins)."""
        ...

    def reset(self, conversation_id: str) -> None:
        """Start the history over; earlier turns stay in the transcript."""
        ...

    def transcript(self, conversation_id: str) -> tuple[Message, ...]:
        """Every turn ever stored in a conversation, across resets, ordered by seq."""
        ...

    def conversation_ids(self, *, limit: int = 100, offset: int = 0) -> list[str]:
        """Conversation ids, most recently updated first."""
        ...

    def update_metadata(self, conversation_id: str, changes: dict[str, Any]) -> Conversation:
        """Merge ``changes`` into a conversation's metadata (a ``None`` value removes the key)."""
        ...

    def claim(self, key: str) -> bool:
        """Record a once-only key (a delivered event's id): True the first time, False ever after.

        Durable when it returns, and atomic across processes sharing the store, so a channel
        that claims before answering answers a redelivered event once, even across a restart.
        """
        ...

    def request_handover(self, conversation_id: str, reason: str) -> Handover:
        """Ask a person into the conversation: it waits for one, unless one already waits or has it."""
        ...

    def take_handover(self, conversation_id: str, staff: str) -> Handover:
        """``staff`` takes a waiting conversation (or keeps one they hold); :class:`HandoverError`
        naming the holder when another staff member has it, or when nobody asked for a person."""
        ...

    def return_handover(self, conversation_id: str, staff: str, *, close: bool = False) -> Handover:
        """Give a conversation ``staff`` holds, or one still waiting, back to the bot (``closed``
        with ``close``)."""
        ...

    def handover(self, conversation_id: str) -> Handover | None:
        """The conversation's handover, if a person was ever asked in."""
        ...

    def handovers(self, states: Sequence[HandoverState] = OPEN_HANDOVERS) -> tuple[Handover, ...]:
        """The handovers in ``states`` (waiting or taken by default), oldest request first."""
        ...

    def add_correction(self, message_id: int, staff: str, content: str) -> Correction:
        """Store the reply ``staff`` says the bot should have given instead of ``message_id``'s."""
        ...

    def corrections(self, conversation_id: str) -> tuple[Correction, ...]:
        """Every correction of the conversation's replies, oldest first."""
        ...

    def disliked(
        self, *, since: datetime | None = None, until: datetime | None = None, limit: int = 200
    ) -> tuple[tuple[Feedback, Message], ...]:
        """Replies whose latest rating is thumbs down (rated in [since, until)), newest first."""
        ...

    def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""
        ...


# --------------------------------------------------------------------------- schema


class _UTCText(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as fixed-width UTC ISO 8601 text (sorts by time)."""

    impl = String(32)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> str | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"store timestamps must be timezone-aware, got {value!r}")
        return value.astimezone(UTC).isoformat(timespec="microseconds")

    def process_result_value(self, value: str | None, dialect: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value)


_ID = BigInteger().with_variant(Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid

metadata_obj = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

conversations = Table(
    "chatbot_conversations",
    metadata_obj,
    Column("id", Text, primary_key=True),
    Column("created_at", _UTCText, nullable=False),
    Column("updated_at", _UTCText, nullable=False, index=True),
    Column("system_prompt", Text, nullable=True),
    Column("metadata", Text, nullable=False),  # a JSON object
    Column("epoch", Integer, nullable=False, default=0),
)

messages = Table(
    "chatbot_messages",
    metadata_obj,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("conversation_id", Text, ForeignKey(conversations.c.id), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("meta", Text, nullable=False),  # a JSON object
    Column("created_at", _UTCText, nullable=False),
    UniqueConstraint("conversation_id", "seq"),
    sqlite_autoincrement=True,  # ids are never reused: feedback points at them
)

feedback = Table(
    "chatbot_feedback",
    metadata_obj,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("message_id", _ID, ForeignKey(messages.c.id), nullable=False),
    Column("conversation_id", Text, ForeignKey(conversations.c.id), nullable=False),
    Column("rating", Integer, nullable=False),
    Column("comment", Text, nullable=True),
    Column("created_at", _UTCText, nullable=False),
    Index(None, "conversation_id"),
    sqlite_autoincrement=True,
)

claims = Table(
    "chatbot_claims",
    metadata_obj,
    Column("key", Text, primary_key=True),
    Column("created_at", _UTCText, nullable=False),
)

handovers = Table(
    "chatbot_handovers",
    metadata_obj,
    Column("conversation_id", Text, ForeignKey(conversations.c.id), primary_key=True),
    Column("state", String(16), nullable=False, index=True),  # waiting | taken | returned | closed
    Column("reason", Text, nullable=False),
    Column("staff", Text, nullable=True),
    Column("requested_at", _UTCText, nullable=False),
    Column("updated_at", _UTCText, nullable=False),
)

corrections = Table(
    "chatbot_corrections",
    metadata_obj,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("message_id", _ID, ForeignKey(messages.c.id), nullable=False),
    Column("conversation_id", Text, ForeignKey(conversations.c.id), nullable=False),
    Column("content", Text, nullable=False),
    Column("staff", Text, nullable=False),
    Column("created_at", _UTCText, nullable=False),
    Index(None, "conversation_id"),
    sqlite_autoincrement=True,
)

MIGRATIONS_FOLDER = Path(__file__).with_name("migrations")
# More folders of revisions, read when a store opens (a test adds a revision of its own here).
EXTRA_MIGRATION_FOLDERS: list[Path] = []
# Before Alembic, a chatbot_schema_version table held a number; these are its revisions.
LEGACY_REVISIONS = {1: "0001", 2: "0002"}
LEGACY_TABLE = "chatbot_schema_version"
_MIGRATION_LOCK = 7_306_524_101  # PostgreSQL advisory lock key: "chatbot migrations"
UPGRADE_VARIABLE = "CHATBOT_STORE_UPGRADE"


def _alembic_config(conn: Connection | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_FOLDER))
    config.set_main_option("path_separator", "os")
    folders = [MIGRATIONS_FOLDER / "versions", *EXTRA_MIGRATION_FOLDERS]
    config.set_main_option("version_locations", os.pathsep.join(str(folder) for folder in folders))
    config.attributes["connection"] = conn
    return config


def schema_head() -> str:
    """The newest schema revision this chatbot knows."""
    from alembic.script import ScriptDirectory

    return _head(ScriptDirectory.from_config(_alembic_config()))


def _head(script: Any) -> str:
    """The newest revision of an Alembic ScriptDirectory."""
    head = script.get_current_head()
    assert head is not None, "chatbot/migrations has no revision"
    return str(head)


def _current_revision(conn: Connection) -> str | None:
    """The database's revision: Alembic's, or the pre-Alembic version number's, or None (empty)."""
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(conn).get_current_revision()
    if current is None and inspect(conn).has_table(LEGACY_TABLE):
        version = conn.scalar(text(f"SELECT max(version) FROM {LEGACY_TABLE}"))
        current = LEGACY_REVISIONS.get(int(version or 0), f"legacy-{version}")
    return current


def _migrate(conn: Connection, name: str, *, upgrade: bool) -> tuple[str | None, str]:
    """Bring the database to the head revision (or refuse); returns (before, after)."""
    from alembic import command
    from alembic.script import ScriptDirectory

    if conn.dialect.name == "postgresql":  # replicas starting together migrate one at a time
        conn.execute(select(func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
    config = _alembic_config(conn)
    script = ScriptDirectory.from_config(config)
    head = _head(script)
    current = _current_revision(conn)
    if current is not None and current not in {rev.revision for rev in script.walk_revisions()}:
        raise StoreError(
            f"the conversation store {name} has schema revision {current}, which this chatbot does "
            f"not know (its newest is {head}): it was written by a newer version of chatbot",
            hint="upgrade the chatbot package (pip install -U chatbot), or use another store",
        )
    if current == head:
        return current, head
    if not upgrade:
        raise StoreError(
            f"the conversation store {name} is at schema revision {current or '(empty)'}, "
            f"and this chatbot needs {head}",
            hint=f"run `chatbot db upgrade --store URL`, or unset {UPGRADE_VARIABLE} to upgrade at start-up",
        )
    if current is not None and inspect(conn).has_table(LEGACY_TABLE):
        command.stamp(config, current)  # adopt a pre-Alembic store at the revision it holds
        conn.execute(text(f"DROP TABLE {LEGACY_TABLE}"))
    command.upgrade(config, "head")
    return current, head


# --------------------------------------------------------------------------- engines


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    """Set durability pragmas on every new SQLite connection, and let SQLAlchemy emit BEGIN."""
    dbapi_connection.isolation_level = None  # the driver's own BEGIN handling is off
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    """Writers take the write lock up front, so two processes never deadlock on an upgrade."""
    mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


# A database that does not answer fails a request in seconds instead of hanging it.
_CONNECT_ARGS: dict[str, dict[str, Any]] = {"postgresql": {"connect_timeout": 5}}


def _is_sqlite_memory(url: URL) -> bool:
    """Whether ``url`` names SQLite's in-memory database."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _create_engine(url: URL, *, echo: bool) -> Engine:
    """An engine for ``url``; SQLite gets its pragmas, BEGIN handling and a shared memory DB."""
    if url.get_backend_name() != "sqlite":
        # pre_ping: a connection the server dropped (a restart, a failover) is replaced before
        # use, so service resumes by itself when the database is back
        return create_engine(
            url, echo=echo, pool_pre_ping=True, connect_args=_CONNECT_ARGS.get(url.get_backend_name(), {})
        )
    options: dict[str, Any] = {"connect_args": {"check_same_thread": False}}
    if _is_sqlite_memory(url):
        options["poolclass"] = StaticPool  # one connection, so every thread sees one database
    engine = create_engine(url, echo=echo, **options)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _parse_url(url: str) -> URL:
    """``url`` parsed; StoreError if it is not a database URL."""
    try:
        return make_url(url)
    except sa_exc.ArgumentError as error:
        raise StoreError(
            f"not a database URL: {url!r}",
            hint="use sqlite:///path/to/chat.db, postgresql://user@host/db or a file path",
        ) from error


def _display_name(url: URL) -> str:
    """The file of a SQLite store, else the URL without its password."""
    if url.get_backend_name() == "sqlite":
        return ":memory:" if _is_sqlite_memory(url) else str(url.database)
    return url.render_as_string(hide_password=True)


def _engine_or_error(url: URL, *, echo: bool, name: str) -> Engine:
    """The engine for ``url``; StoreError for an unknown scheme or a missing driver."""
    try:
        return _create_engine(url, echo=echo)
    except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError, ImportError) as error:
        raise StoreError(
            f"cannot open the conversation store {name}: {error}",
            hint="check the URL's scheme and install its driver (for PostgreSQL: pip install "
            "'psycopg[binary]' and use postgresql+psycopg://)",
        ) from error


# --------------------------------------------------------------------------- records


def _now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def _encode_json(value: dict[str, Any] | None, what: str) -> str:
    """``value`` as JSON text; rejects what JSON cannot hold so reads give back the same."""
    if value is None:
        return "{}"
    if not isinstance(value, dict):
        raise InvalidMessage(f"{what} must be a dict, got {type(value).__name__}")
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise InvalidMessage(
            f"{what} cannot be stored as JSON: {error}",
            hint="use only str, int, float, bool, None, lists and dicts with str keys",
        ) from error


def _message(row: Row[Any]) -> Message:
    """A messages row as a record (with its own meta dict)."""
    return Message(
        id=row.id,
        conversation_id=row.conversation_id,
        seq=row.seq,
        role=row.role,
        content=row.content,
        created_at=row.created_at,
        meta=json.loads(row.meta),
        epoch=row.epoch,
    )


def _feedback(row: Row[Any]) -> Feedback:
    """A feedback row as a record."""
    return Feedback(
        id=row.id,
        message_id=row.message_id,
        conversation_id=row.conversation_id,
        rating=row.rating,
        comment=row.comment,
        created_at=row.created_at,
    )


def _handover(row: Row[Any] | None) -> Handover:
    """A handover row as a record."""
    assert row is not None
    return Handover(**row._mapping)  # the columns are the record's fields


def _handover_row(conn: Connection, conversation_id: str, *, lock: bool = False) -> Row[Any] | None:
    """The conversation's handover row; with ``lock``, locked until commit on PostgreSQL (SQLite's
    write lock covers it)."""
    query = select(handovers).where(handovers.c.conversation_id == conversation_id)
    return conn.execute(query.with_for_update() if lock else query).first()


def _open_handover(conn: Connection, conversation_id: str) -> Row[Any]:
    """The handover row of a conversation a person was asked into and has not handed back."""
    row = _handover_row(conn, conversation_id, lock=True)
    if row is None or row.state not in OPEN_HANDOVERS:
        _epoch(conn, conversation_id)  # UnknownConversation first
        raise HandoverError(
            f"conversation {conversation_id} is not waiting for a person",
            hint="the bot answers it; ask a person in first (Engine.request_person)",
        )
    return row


def _update_handover(conversation_id: str) -> Any:
    return update(handovers).where(handovers.c.conversation_id == conversation_id)


def _check_staff(staff: object) -> None:
    if not isinstance(staff, str) or not staff.strip() or len(staff) > 200:
        raise InvalidMessage(f"a staff member's name is 1 to 200 characters of text, not {staff!r:.80}")


def _unknown_conversation(conversation_id: str) -> UnknownConversation:
    """The error for a conversation id the store does not know."""
    return UnknownConversation(
        f"no conversation {conversation_id!r} in the store",
        hint="start it with open_conversation() first, or check the id",
    )


def _check_conversation_id(conversation_id: str) -> None:
    """Reject an empty or non-string conversation id before it is stored."""
    if not isinstance(conversation_id, str) or not conversation_id:
        raise InvalidMessage(
            f"a conversation id must be a non-empty string, got {conversation_id!r}",
            hint="use the channel's chat or session id",
        )


def _check_turn(role: str, content: str) -> None:
    """Reject a turn with an unknown role or non-text content."""
    if role not in ROLES:
        raise InvalidMessage(f"unknown role {role!r}", hint=f"use one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise InvalidMessage(f"message content must be a string, got {type(content).__name__}")


def _check_rating(rating: int, comment: str | None) -> None:
    """Reject a rating other than +1/-1 (bools too) and a comment that is not text."""
    if isinstance(rating, bool) or rating not in (1, -1):
        raise InvalidMessage(
            f"a rating must be +1 or -1, got {rating!r}", hint="send 1 (thumbs up) or -1 (down)"
        )
    if comment is not None and not isinstance(comment, str):
        raise InvalidMessage(f"a feedback comment must be a string, got {type(comment).__name__}")


# --------------------------------------------------------------------------- queries


def _epoch(conn: Connection, conversation_id: str) -> int:
    """The conversation's current epoch; raises UnknownConversation."""
    epoch = conn.scalar(select(conversations.c.epoch).where(conversations.c.id == conversation_id))
    if epoch is None:
        raise _unknown_conversation(conversation_id)
    return epoch


def _touch(conn: Connection, conversation_id: str, now: datetime, *, new_epoch: bool) -> None:
    """Mark the conversation updated (and start a new epoch if asked).

    On PostgreSQL this UPDATE also locks the row until commit, so concurrent appends to one
    conversation compute their seq one after the other; UNIQUE(conversation_id, seq) backs it up.
    """
    values: dict[str, Any] = {"updated_at": now}
    if new_epoch:
        values["epoch"] = conversations.c.epoch + 1
    result = conn.execute(update(conversations).where(conversations.c.id == conversation_id).values(**values))
    if result.rowcount == 0:
        raise _unknown_conversation(conversation_id)


def _next_seq(conn: Connection, conversation_id: str) -> int:
    """The seq the next turn of the conversation gets (seq counts on across resets)."""
    last = select(func.max(messages.c.seq)).where(messages.c.conversation_id == conversation_id)
    return (conn.scalar(last) or 0) + 1


def _inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the row an INSERT just wrote."""
    key = result.inserted_primary_key
    if key is None:  # only for executemany or statements without a primary key
        raise StoreError("the store did not report the id of the row it wrote")
    return int(key[0])


def _insert_if_absent(conn: Connection, table: Table, values: dict[str, Any]) -> bool:
    """Insert a row unless one with its primary key exists (atomically where supported);
    whether it was inserted."""
    (key,) = table.primary_key.columns
    dialects: dict[str, Callable[[Table], Any]] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}
    dialect_insert = dialects.get(conn.dialect.name)
    if dialect_insert is not None:
        statement = dialect_insert(table).on_conflict_do_nothing(index_elements=[key.name])
        statement = statement.values(**values)
        if conn.dialect.name == "postgresql":  # psycopg reports -1 rows for it: ask for the row back
            return conn.execute(statement.returning(key)).first() is not None
        return bool(conn.execute(statement).rowcount)  # SQLite before 3.35 has no RETURNING
    if conn.scalar(select(key).where(key == values[key.name])) is not None:
        return False
    conn.execute(insert(table).values(**values))  # other dialects: the primary key catches a racing twin
    return True


def _read_messages(conn: Connection, conversation_id: str, *, epoch: int | None) -> tuple[Message, ...]:
    """The conversation's turns in one epoch (all epochs when ``epoch`` is None), by seq."""
    query = select(messages).where(messages.c.conversation_id == conversation_id)
    if epoch is not None:
        query = query.where(messages.c.epoch == epoch)
    return tuple(_message(row) for row in conn.execute(query.order_by(messages.c.seq)))


def _read_conversation(conn: Connection, conversation_id: str) -> Conversation:
    """A conversation with its current epoch's turns; raises UnknownConversation."""
    row = conn.execute(select(conversations).where(conversations.c.id == conversation_id)).first()
    if row is None:
        raise _unknown_conversation(conversation_id)
    return Conversation(
        id=row.id,
        created_at=row.created_at,
        system_prompt=row.system_prompt,
        metadata=json.loads(row.metadata),
        messages=_read_messages(conn, conversation_id, epoch=row.epoch),
    )


def _rated_conversation(conn: Connection, message_id: int, what: str = "rated") -> str:
    """The conversation of the assistant message ``message_id``; feedback and corrections go on
    nothing else."""
    query = select(messages.c.conversation_id, messages.c.role).where(messages.c.id == message_id)
    rated = conn.execute(query).first()
    if rated is None:
        raise UnknownMessage(
            f"no message {message_id} in the store",
            hint="use the message_id of a reply the engine returned",
        )
    if rated.role != "assistant":
        raise InvalidMessage(
            f"message {message_id} is a {rated.role} message; only assistant replies are {what}",
            hint="use the reply's message_id, not the user's turn",
        )
    return rated.conversation_id


# --------------------------------------------------------------------------- the store


class SQLStore:
    """A :class:`Store` in any database SQLAlchemy reaches (SQLite now, PostgreSQL next).

    Safe to share between threads: SQLite calls are serialized by a lock (SQLite has one
    writer anyway, and the in-memory database is one shared connection); other databases
    rely on their own locking.
    """

    def __init__(self, url: str, *, echo: bool = False, upgrade: bool | None = None) -> None:
        """Open the store at ``url``, applying the schema revisions it lacks unless ``upgrade`` is
        False (default: True, or ``$CHATBOT_STORE_UPGRADE`` = 0 for False)."""
        if upgrade is None:
            upgrade = settings.store_upgrade()
        parsed = _parse_url(url)
        self._name = _display_name(parsed)
        self._closed = False
        self._lock: AbstractContextManager[Any] = (
            threading.RLock() if parsed.get_backend_name() == "sqlite" else nullcontext()
        )
        self._engine = _engine_or_error(parsed, echo=echo, name=self._name)
        try:
            with self._transaction(write=True) as conn:
                self.revision_before, self.revision = _migrate(conn, self._name, upgrade=upgrade)
        except BaseException:
            self._engine.dispose()
            raise

    @classmethod
    def sqlite(cls, path: str | os.PathLike[str], *, upgrade: bool | None = None) -> SQLStore:
        """A store in a SQLite file (created with its parent folders if missing)."""
        location = Path(path).expanduser()
        try:
            location.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(
                f"cannot create the folder for the conversation store {location}: {error}",
                hint="choose a path in a folder you can write to",
            ) from error
        return cls(_sqlite_url(location), upgrade=upgrade)

    @classmethod
    def memory(cls) -> SQLStore:
        """A store in memory, shared by all threads, gone on close (for tests)."""
        return cls("sqlite+pysqlite://", upgrade=True)

    def __repr__(self) -> str:
        return f"SQLStore({self._name!r})"

    def __enter__(self) -> SQLStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """One transaction, committed on exit; database failures become StoreError."""
        with self._lock:
            if self._closed:
                raise StoreError(
                    f"the conversation store {self._name} is closed",
                    hint="open it again with open_store()",
                )
            try:
                with self._engine.connect() as conn:
                    conn.execution_options(**{_WRITE: write})
                    with conn.begin():
                        yield conn
            except sa_exc.DBAPIError as error:
                raise StoreError(
                    f"the conversation store {self._name} failed: {error.orig}",
                    hint="check that it is a chatbot store and the disk or server is healthy",
                ) from error

    def open_conversation(
        self,
        conversation_id: str,
        *,
        system_prompt: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Conversation:
        """Start a conversation, or resume it (then the stored prompt and metadata are kept)."""
        _check_conversation_id(conversation_id)
        now = _now()
        values = {
            "id": conversation_id,
            "created_at": now,
            "updated_at": now,
            "system_prompt": system_prompt,
            "metadata": _encode_json(metadata, "metadata"),
            "epoch": 0,
        }
        with self._transaction(write=True) as conn:
            _insert_if_absent(conn, conversations, values)
            return _read_conversation(conn, conversation_id)

    def get_conversation(self, conversation_id: str) -> Conversation:
        """A conversation with its current history (since the last reset), ordered by seq."""
        with self._transaction(write=False) as conn:
            return _read_conversation(conn, conversation_id)

    def append_message(
        self, conversation_id: str, role: Role, content: str, *, meta: dict[str, Any] | None = None
    ) -> Message:
        """Store one turn with the next seq of its conversation; durable when this returns."""
        _check_turn(role, content)
        encoded, now = _encode_json(meta, "meta"), _now()
        fields: dict[str, Any] = {
            "conversation_id": conversation_id,
            "role": role,
            "content": content,
            "created_at": now,
        }
        with self._transaction(write=True) as conn:
            _touch(conn, conversation_id, now, new_epoch=False)
            epoch, seq = _epoch(conn, conversation_id), _next_seq(conn, conversation_id)
            row = fields | {"epoch": epoch, "seq": seq, "meta": encoded}
            message_id = _inserted_id(conn.execute(insert(messages).values(row)))
        return Message(id=message_id, seq=seq, meta=json.loads(encoded), epoch=epoch, **fields)

    def add_feedback(self, message_id: int, rating: int, *, comment: str | None = None) -> Feedback:
        """Record a +1/-1 rating of an assistant reply; earlier ratings of it are kept too."""
        _check_rating(rating, comment)
        fields: dict[str, Any] = {
            "message_id": message_id,
            "rating": rating,
            "comment": comment,
            "created_at": _now(),
        }
        with self._transaction(write=True) as conn:
            conversation_id = _rated_conversation(conn, message_id)
            row = fields | {"conversation_id": conversation_id}
            feedback_id = _inserted_id(conn.execute(insert(feedback).values(row)))
        return Feedback(id=feedback_id, conversation_id=conversation_id, **fields)

    def feedback(self, conversation_id: str) -> tuple[Feedback, ...]:
        """All feedback of a conversation, oldest first (the latest rating of a message wins)."""
        query = select(feedback).where(feedback.c.conversation_id == conversation_id)
        with self._transaction(write=False) as conn:
            _epoch(conn, conversation_id)
            return tuple(_feedback(row) for row in conn.execute(query.order_by(feedback.c.id)))

    def reset(self, conversation_id: str) -> None:
        """Start the history over; the earlier turns stay in the transcript."""
        with self._transaction(write=True) as conn:
            _touch(conn, conversation_id, _now(), new_epoch=True)

    def transcript(self, conversation_id: str) -> tuple[Message, ...]:
        """Every turn ever stored in a conversation, across resets, ordered by seq."""
        with self._transaction(write=False) as conn:
            _epoch(conn, conversation_id)
            return _read_messages(conn, conversation_id, epoch=None)

    def conversation_ids(self, *, limit: int = 100, offset: int = 0) -> list[str]:
        """Conversation ids, most recently updated first."""
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must be >= 0, got {limit} and {offset}")
        query = (
            select(conversations.c.id)
            .order_by(conversations.c.updated_at.desc(), conversations.c.id)
            .limit(limit)
            .offset(offset)
        )
        with self._transaction(write=False) as conn:
            return list(conn.scalars(query))

    def update_metadata(self, conversation_id: str, changes: dict[str, Any]) -> Conversation:
        """Merge ``changes`` into a conversation's metadata (a ``None`` value removes the key)."""
        with self._transaction(write=True) as conn:
            current = _read_conversation(conn, conversation_id).metadata
            merged = {k: v for k, v in {**current, **changes}.items() if v is not None}
            conn.execute(
                update(conversations)
                .where(conversations.c.id == conversation_id)
                .values(metadata=_encode_json(merged, "metadata"))
            )
            return _read_conversation(conn, conversation_id)

    def claim(self, key: str) -> bool:
        """Record a once-only key: True the first time, False ever after (durable, atomic)."""
        if not isinstance(key, str) or not key or len(key) > 512:
            raise InvalidMessage(f"a claim key is 1 to 512 characters of text, not {key!r:.80}")
        with self._transaction(write=True) as conn:
            return _insert_if_absent(conn, claims, {"key": key, "created_at": _now()})

    def request_handover(self, conversation_id: str, reason: str) -> Handover:
        """Ask a person in: ``waiting``, unless one already waits or has it (then it stays as it is)."""
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 200:
            raise InvalidMessage(f"a handover reason is 1 to 200 characters of text, not {reason!r:.80}")
        now = _now()
        asked = {"state": "waiting", "reason": reason, "staff": None, "requested_at": now, "updated_at": now}
        with self._transaction(write=True) as conn:
            _epoch(conn, conversation_id)  # UnknownConversation
            if not _insert_if_absent(conn, handovers, {"conversation_id": conversation_id, **asked}):
                row = _handover_row(conn, conversation_id, lock=True)
                if row is not None and row.state not in OPEN_HANDOVERS:
                    conn.execute(_update_handover(conversation_id).values(**asked))
            return _handover(_handover_row(conn, conversation_id, lock=True))

    def take_handover(self, conversation_id: str, staff: str) -> Handover:
        """``staff`` takes a waiting conversation, or keeps one they hold."""
        hint = "ask them, or take it once they hand it back"
        return self._move_handover(conversation_id, staff, "taken", hint)

    def return_handover(self, conversation_id: str, staff: str, *, close: bool = False) -> Handover:
        """Give a conversation ``staff`` holds, or one still waiting, back to the bot (``closed``
        instead of ``returned`` with ``close``: the person resolved it)."""
        hint = "only the one who has it hands it back"
        return self._move_handover(conversation_id, staff, "closed" if close else "returned", hint)

    def _move_handover(self, conversation_id: str, staff: str, state: HandoverState, hint: str) -> Handover:
        """Put an open handover in ``state`` as ``staff``, unless another staff member holds it."""
        _check_staff(staff)
        with self._transaction(write=True) as conn:
            row = _open_handover(conn, conversation_id)
            if row.state == "taken" and row.staff != staff:
                raise HandoverError(f"{row.staff} has conversation {conversation_id}", hint=hint)
            moved = {"state": state, "staff": staff, "updated_at": _now()}
            conn.execute(_update_handover(conversation_id).values(**moved))
            return _handover(_handover_row(conn, conversation_id, lock=True))

    def handover(self, conversation_id: str) -> Handover | None:
        """The conversation's handover, if a person was ever asked in."""
        with self._transaction(write=False) as conn:
            row = _handover_row(conn, conversation_id)
            return None if row is None else _handover(row)

    def handovers(self, states: Sequence[HandoverState] = OPEN_HANDOVERS) -> tuple[Handover, ...]:
        """The handovers in ``states``, oldest request first."""
        query = select(handovers).where(handovers.c.state.in_(list(states)))
        with self._transaction(write=False) as conn:
            rows = conn.execute(query.order_by(handovers.c.requested_at, handovers.c.conversation_id))
            return tuple(_handover(row) for row in rows)

    def add_correction(self, message_id: int, staff: str, content: str) -> Correction:
        """Store the reply ``staff`` says the bot should have given instead of ``message_id``'s."""
        _check_staff(staff)
        _check_turn("assistant", content)
        fields: dict[str, Any] = {"message_id": message_id, "content": content, "staff": staff}
        fields["created_at"] = _now()
        with self._transaction(write=True) as conn:
            conversation_id = _rated_conversation(conn, message_id, "corrected")
            row = fields | {"conversation_id": conversation_id}
            correction_id = _inserted_id(conn.execute(insert(corrections).values(row)))
        return Correction(id=correction_id, conversation_id=conversation_id, **fields)

    def corrections(self, conversation_id: str) -> tuple[Correction, ...]:
        """Every correction of a conversation's replies, oldest first (the latest of a reply wins)."""
        query = select(corrections).where(corrections.c.conversation_id == conversation_id)
        with self._transaction(write=False) as conn:
            _epoch(conn, conversation_id)
            return tuple(Correction(**row._mapping) for row in conn.execute(query.order_by(corrections.c.id)))

    def disliked(
        self, *, since: datetime | None = None, until: datetime | None = None, limit: int = 200
    ) -> tuple[tuple[Feedback, Message], ...]:
        """Replies whose latest rating is thumbs down, rated in [since, until), newest first,
        each with that rating."""
        latest = select(func.max(feedback.c.id)).group_by(feedback.c.message_id)
        query = select(feedback).where(feedback.c.id.in_(latest), feedback.c.rating == -1)
        if since is not None:
            query = query.where(feedback.c.created_at >= since)
        if until is not None:
            query = query.where(feedback.c.created_at < until)
        with self._transaction(write=False) as conn:
            ratings = [
                _feedback(row) for row in conn.execute(query.order_by(feedback.c.id.desc()).limit(limit))
            ]
            ids = [rating.message_id for rating in ratings]
            rated = {
                row.id: _message(row) for row in conn.execute(select(messages).where(messages.c.id.in_(ids)))
            }
        return tuple((rating, rated[rating.message_id]) for rating in ratings)

    def close(self) -> None:
        """Release every connection; later calls raise StoreError. Closing twice is fine."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._engine.dispose()


def open_store(url_or_path: str | os.PathLike[str], *, upgrade: bool | None = None) -> SQLStore:
    """Open a store from a database URL, a SQLite file path, or ``":memory:"``."""
    if isinstance(url_or_path, str):
        if url_or_path == ":memory:":
            return SQLStore.memory()
        if "://" in url_or_path:
            return SQLStore(url_or_path, upgrade=upgrade)
    return SQLStore.sqlite(url_or_path, upgrade=upgrade)


def _sqlite_url(path: Path) -> str:
    """The URL of the SQLite file at ``path``."""
    return URL.create("sqlite+pysqlite", database=str(path)).render_as_string()


def _url_of(url_or_path: str | os.PathLike[str]) -> URL:
    """A database URL, or a SQLite file path turned into one."""
    location = str(url_or_path)
    return _parse_url(location if "://" in location else _sqlite_url(Path(location).expanduser()))


def display_name(url_or_path: str | os.PathLike[str]) -> str:
    """How a store is named to people: a SQLite file's path, else its URL without the password."""
    return _display_name(_url_of(url_or_path))


def store_revision(url_or_path: str | os.PathLike[str]) -> str | None:
    """The store's schema revision, read without changing anything (None: an empty database)."""
    url = _url_of(url_or_path)
    name = _display_name(url)
    engine = _engine_or_error(url, echo=False, name=name)
    try:
        with engine.connect() as conn:
            return _current_revision(conn)
    except sa_exc.DBAPIError as error:
        raise StoreError(f"cannot read the conversation store {name}: {error.orig}") from error
    finally:
        engine.dispose()


def upgrade_store(url_or_path: str | os.PathLike[str]) -> tuple[str | None, str]:
    """Apply the schema revisions the store lacks (``chatbot db upgrade``): (before, after)."""
    with open_store(url_or_path, upgrade=True) as store:
        return store.revision_before, store.revision
