"""The conversations, their messages and the feedback on replies.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid
TIME = sa.String(32)  # UTC ISO 8601 text: sorts by time on every database


def upgrade() -> None:
    op.create_table(
        "chatbot_conversations",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_chatbot_conversations"),
    )
    op.create_index("ix_chatbot_conversations_updated_at", "chatbot_conversations", ["updated_at"])
    op.create_table(
        "chatbot_messages",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("meta", sa.Text(), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["chatbot_conversations.id"],
            name="fk_chatbot_messages_conversation_id_chatbot_conversations",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_chatbot_messages"),
        sa.UniqueConstraint("conversation_id", "seq", name="uq_chatbot_messages_conversation_id_seq"),
        sqlite_autoincrement=True,  # ids are never reused: feedback points at them
    )
    op.create_table(
        "chatbot_feedback",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("message_id", ID, nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("rating", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["chatbot_conversations.id"],
            name="fk_chatbot_feedback_conversation_id_chatbot_conversations",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"], ["chatbot_messages.id"], name="fk_chatbot_feedback_message_id_chatbot_messages"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_chatbot_feedback"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_chatbot_feedback_conversation_id", "chatbot_feedback", ["conversation_id"])


def downgrade() -> None:
    op.drop_table("chatbot_feedback")
    op.drop_table("chatbot_messages")
    op.drop_index("ix_chatbot_conversations_updated_at", "chatbot_conversations")
    op.drop_table("chatbot_conversations")
