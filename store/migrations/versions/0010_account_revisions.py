"""account revisions: an admin's changes to an account (name, tier), and the tier in force when
each ticket was created (R1/R2 route tickets created after a tier change by the new tier)

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26 02:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "account_revisions",
        sa.Column("id", Id, primary_key=True),
        sa.Column("account_id", sa.BigInteger(), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("before", sa.JSON(), nullable=False),
        sa.Column("after", sa.JSON(), nullable=False),
        sa.Column("tier_before", sa.String(length=20), nullable=True),
    )
    op.create_index(
        "ix_account_revisions_account_changed", "account_revisions", ["account_id", "changed_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_account_revisions_account_changed", table_name="account_revisions")
    op.drop_table("account_revisions")
