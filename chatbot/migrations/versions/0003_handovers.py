"""Conversations waiting for a person, or held by one (the support team's queue).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chatbot_handovers",
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("staff", sa.Text(), nullable=True),
        sa.Column("requested_at", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["chatbot_conversations.id"],
            name="fk_chatbot_handovers_conversation_id_chatbot_conversations",
        ),
        sa.PrimaryKeyConstraint("conversation_id", name="pk_chatbot_handovers"),
    )
    op.create_index("ix_chatbot_handovers_state", "chatbot_handovers", ["state"])


def downgrade() -> None:
    op.drop_index("ix_chatbot_handovers_state", table_name="chatbot_handovers")
    op.drop_table("chatbot_handovers")
