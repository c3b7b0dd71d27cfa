"""replies: outbound mail and its delivery state; inboxes.outbound

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("inboxes") as batch:
        batch.add_column(sa.Column("outbound", sa.JSON(), nullable=True))
    op.create_table(
        "replies",
        sa.Column("id", Id, primary_key=True),
        sa.Column("key", sa.String(length=200), nullable=False, unique=True),
        sa.Column("request_sha256", sa.String(length=64), nullable=False),
        sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("inbox_id", Id, sa.ForeignKey("inboxes.id"), nullable=False),
        sa.Column("conversation_id", Id, sa.ForeignKey("conversations.id"), nullable=False),
        sa.Column("message_id", Id, sa.ForeignKey("messages.id"), nullable=False, unique=True),
        sa.Column("via", sa.String(length=20), nullable=False),
        sa.Column("rfc_message_id", sa.String(length=300), nullable=False),
        sa.Column("mail", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempts_left", sa.Integer(), nullable=False),
        sa.Column("uncertain", sa.Boolean(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("provider_message_id", sa.String(length=300), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('queued','sending','sent','failed')", name="state_known"),
    )
    op.create_index("ix_replies_conversation_id", "replies", ["conversation_id"])
    op.create_index("ix_replies_state_due", "replies", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_replies_state_due", table_name="replies")
    op.drop_index("ix_replies_conversation_id", table_name="replies")
    op.drop_table("replies")
    with op.batch_alter_table("inboxes") as batch:
        batch.drop_column("outbound")
