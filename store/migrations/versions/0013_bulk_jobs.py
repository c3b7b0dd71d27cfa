"""bulk jobs: a job, its frozen items and the chunks that run them (handlers/bulk.py)

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-26 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.types import UTCDateTime

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "bulk_jobs",
        sa.Column("id", Id, primary_key=True),
        sa.Column("account_id", Id, sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("action", sa.JSON(), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(30), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("cause", sa.JSON(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "state IN ('running','paused','cancelled','completed','completed_with_failures')",
            name="state_known",
        ),
    )
    op.create_index("ix_bulk_jobs_account_id", "bulk_jobs", ["account_id"])
    op.create_table(
        "bulk_chunks",
        sa.Column("job_id", Id, sa.ForeignKey("bulk_jobs.id"), primary_key=True),
        sa.Column("chunk", sa.Integer(), primary_key=True),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("published", sa.Integer(), nullable=False),
        sa.CheckConstraint("state IN ('queued','done')", name="state_known"),
    )
    op.create_index("ix_bulk_chunks_state_lease", "bulk_chunks", ["state", "lease_until"])
    op.create_table(
        "bulk_items",
        sa.Column("job_id", Id, sa.ForeignKey("bulk_jobs.id"), primary_key=True),
        sa.Column("target_id", sa.BigInteger(), primary_key=True),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.CheckConstraint("state IN ('pending','done','failed')", name="state_known"),
    )
    op.create_index("ix_bulk_items_job_chunk", "bulk_items", ["job_id", "chunk"])
    op.create_index("ix_bulk_items_job_state", "bulk_items", ["job_id", "state"])


def downgrade() -> None:
    op.drop_table("bulk_items")
    op.drop_table("bulk_chunks")
    op.drop_table("bulk_jobs")
