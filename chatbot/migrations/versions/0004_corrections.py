"""The replies staff members say the bot should have given (corrections), beside the originals.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid


def upgrade() -> None:
    op.create_table(
        "chatbot_corrections",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("message_id", ID, nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("staff", sa.Text(), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"], ["chatbot_messages.id"], name="fk_chatbot_corrections_message_id_chatbot_messages"
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["chatbot_conversations.id"],
            name="fk_chatbot_corrections_conversation_id_chatbot_conversations",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_chatbot_corrections"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_chatbot_corrections_conversation_id", "chatbot_corrections", ["conversation_id"])


def downgrade() -> None:
    op.drop_index("ix_chatbot_corrections_conversation_id", table_name="chatbot_corrections")
    op.drop_table("chatbot_corrections")
