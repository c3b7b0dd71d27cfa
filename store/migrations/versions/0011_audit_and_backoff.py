"""audit and sweep backoff: each change records its cause (API token, delivery, rule, bulk job,
reconciliation), and each journal row how often the sweep published it again, so that a row
whose workers are merely behind is published at growing intervals instead of every period

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-26 04:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("changes", sa.Column("cause", sa.JSON(), nullable=True))
    for table in ("deliveries", "pending_changes"):
        op.add_column(
            table, sa.Column("republished", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    for table in ("deliveries", "pending_changes"):
        op.drop_column(table, "republished")
    op.drop_column("changes", "cause")
