"""Alembic's entry point: runs the migrations on the connection the store hands over.

:func:`chatbot.store.upgrade` opens a transaction (holding PostgreSQL's advisory lock, or
SQLite's write lock) and passes its connection as ``config.attributes["connection"]``, so the
whole upgrade commits or rolls back at once and two replicas never migrate at the same time.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from chatbot.store import metadata_obj

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # the alembic command line (writing a revision): a scratch database
    connection = create_engine(config.get_main_option("sqlalchemy.url") or "sqlite://").connect()
context.configure(
    connection=connection,
    target_metadata=metadata_obj,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
