"""Once-only keys (the Slack events already answered), claimed atomically across replicas.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chatbot_claims",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_chatbot_claims"),
    )


def downgrade() -> None:
    op.drop_table("chatbot_claims")
