"""outbound events: subscribers (per account, signed with a whsec_ secret, rotated with an
overlap), the outbox of events written in the transaction of the change that made them, one
delivery row per subscriber and event (sent in order, retried from the store), and the log of
every attempt

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("id", Id, primary_key=True),
        sa.Column("account_id", sa.BigInteger(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("types", sa.JSON(), nullable=False),
        sa.Column("secret", sa.String(length=100), nullable=False),
        sa.Column("previous_secret", sa.String(length=100), nullable=True),
        sa.Column("previous_until", When, nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("failing_since", When, nullable=True),
        sa.Column("next_attempt_at", When, nullable=True),
        sa.Column("lease_holder", sa.String(length=64), nullable=True),
        sa.Column("lease_until", When, nullable=True),
        sa.Column("published_at", When, nullable=True),
        sa.Column("created_at", When, nullable=False),
    )
    op.create_index("ix_subscribers_account_id", "subscribers", ["account_id"])
    op.create_table(
        "outbound_events",
        sa.Column("id", Id, primary_key=True),
        sa.Column("account_id", sa.BigInteger(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("change_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("fanned_out", sa.Boolean(), nullable=False, server_default=sa.false()),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_outbound_events_account_created", "outbound_events", ["account_id", "created_at"]
    )
    op.create_index("ix_outbound_events_fanned_out", "outbound_events", ["fanned_out", "id"])
    op.create_table(
        "event_deliveries",
        sa.Column("id", Id, primary_key=True),
        sa.Column(
            "subscriber_id", sa.BigInteger(), sa.ForeignKey("subscribers.id"), nullable=False
        ),
        sa.Column("event_id", sa.BigInteger(), sa.ForeignKey("outbound_events.id"), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("delivered_at", When, nullable=True),
        sa.CheckConstraint("state IN ('pending','delivered')", name="state_known"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_event_deliveries_subscriber_state",
        "event_deliveries",
        ["subscriber_id", "state", "id"],
    )
    op.create_table(
        "event_attempts",
        sa.Column("id", Id, primary_key=True),
        sa.Column(
            "subscriber_id", sa.BigInteger(), sa.ForeignKey("subscribers.id"), nullable=False
        ),
        sa.Column("delivery_id", sa.BigInteger(), nullable=False),
        sa.Column("event_id", sa.BigInteger(), nullable=False),
        sa.Column("at", When, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
    )
    op.create_index("ix_event_attempts_subscriber", "event_attempts", ["subscriber_id", "id"])


def downgrade() -> None:
    op.drop_index("ix_event_attempts_subscriber", table_name="event_attempts")
    op.drop_table("event_attempts")
    op.drop_index("ix_event_deliveries_subscriber_state", table_name="event_deliveries")
    op.drop_table("event_deliveries")
    op.drop_index("ix_outbound_events_fanned_out", table_name="outbound_events")
    op.drop_index("ix_outbound_events_account_created", table_name="outbound_events")
    op.drop_table("outbound_events")
    op.drop_index("ix_subscribers_account_id", table_name="subscribers")
    op.drop_table("subscribers")
