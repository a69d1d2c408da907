"""The conversation store's schema history, as Alembic migrations (see :mod:`chatbot.store`).

``chatbot db upgrade`` applies them, and so does opening a store unless ``CHATBOT_STORE_UPGRADE=0``.
A new migration is a file in ``versions/`` whose ``down_revision`` is the current head; write it
with ``alembic -c chatbot/migrations/alembic.ini revision -m "what it changes"`` and describe the
tables with ``op`` calls (never by importing today's definitions, which move on).
"""
