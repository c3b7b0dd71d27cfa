"""webhook_tokens: one-time request tokens remembered for the signature window

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 07:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "webhook_tokens",
        sa.Column("inbox_id", sa.BigInteger(), nullable=False),
        sa.Column("token", sa.String(length=300), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("inbox_id", "token"),
    )
    op.create_index("ix_webhook_tokens_seen_at", "webhook_tokens", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_tokens_seen_at", table_name="webhook_tokens")
    op.drop_table("webhook_tokens")
