"""chat: contact names, when a conversation was closed, message edits and deletions, provider
delivery statuses

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 00:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("name", sa.String(length=200), nullable=True))
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("closed_at", When, nullable=True))
    op.execute("UPDATE conversations SET closed_at = last_change_at WHERE status = 'closed'")
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("edited_at", When, nullable=True))
        batch.add_column(sa.Column("deleted_at", When, nullable=True))
    op.create_table(
        "message_revisions",
        sa.Column("id", Id, primary_key=True),
        sa.Column("inbox_id", Id, sa.ForeignKey("inboxes.id"), nullable=False),
        sa.Column("external_id", sa.String(length=500), nullable=False),
        sa.Column("event_id", sa.String(length=500), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("previous_text", sa.Text(), nullable=True),
        sa.Column("edited_at", When, nullable=False),
        sa.Column("received_at", When, nullable=False),
        sa.Column("applied", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("inbox_id", "event_id"),
    )
    op.create_index("ix_message_revisions_target", "message_revisions", ["inbox_id", "external_id"])
    op.create_table(
        "provider_statuses",
        sa.Column("inbox_id", sa.BigInteger(), primary_key=True),
        sa.Column("provider_message_id", sa.String(length=300), primary_key=True),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("at", When, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("provider_statuses")
    op.drop_index("ix_message_revisions_target", table_name="message_revisions")
    op.drop_table("message_revisions")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("edited_at")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("closed_at")
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("name")
