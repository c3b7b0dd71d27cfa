"""operations: dead letters say whose they are and whether they were replayed or discarded;
inboxes keep their previous secrets while a rotation is in progress

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 00:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

When = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("inboxes") as batch:
        batch.add_column(sa.Column("previous_secrets", sa.JSON(), nullable=True))
    with op.batch_alter_table("dead_letters") as batch:
        batch.add_column(sa.Column("inbox_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("account_id", sa.BigInteger(), nullable=True))
        batch.add_column(
            sa.Column("state", sa.String(length=10), nullable=False, server_default="waiting")
        )
        batch.add_column(sa.Column("replays", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("replayed_at", When, nullable=True))
        batch.add_column(sa.Column("replayed_as", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("discarded_at", When, nullable=True))
        batch.create_check_constraint("state_known", "state IN ('waiting','replayed','discarded')")
    op.create_index("ix_dead_letters_account_state", "dead_letters", ["account_id", "state"])
    op.create_index("ix_dead_letters_state_created", "dead_letters", ["state", "created_at"])
    _backfill_owners()


def _backfill_owners() -> None:
    """Whose each existing letter is, as handlers/deadletters.py records it for new ones: an
    ingest delivery's inbox (and its account), a change's account, a reply's inbox and account.
    Dead letters are few: one pass in Python, the same on both stores."""
    bind = op.get_bind()
    letters = sa.table(
        "dead_letters",
        sa.column("id", sa.BigInteger()),
        sa.column("task", sa.String()),
        sa.column("payload", sa.JSON()),
        sa.column("inbox_id", sa.BigInteger()),
        sa.column("account_id", sa.BigInteger()),
    )
    inboxes: dict[int, int] = {
        r.id: r.account_id for r in bind.execute(sa.text("SELECT id, account_id FROM inboxes"))
    }
    replies = {
        r.id: (r.inbox_id, r.account_id)
        for r in bind.execute(sa.text("SELECT id, inbox_id, account_id FROM replies"))
    }
    for row in bind.execute(sa.select(letters.c.id, letters.c.task, letters.c.payload)).all():
        inbox_id, account_id = _owner(row.task, row.payload, inboxes, replies)
        if inbox_id is not None or account_id is not None:
            bind.execute(
                letters.update()
                .where(letters.c.id == row.id)
                .values(inbox_id=inbox_id, account_id=account_id)
            )


def _owner(
    task: str, payload: Any, inboxes: dict[int, int], replies: dict[int, tuple[int, int]]
) -> tuple[int | None, int | None]:
    if not isinstance(payload, dict):
        return None, None
    args = payload.get("args")
    first = args[0] if isinstance(args, list) and args else None
    if task == "inboxsync.ingest_batch" and args is None:
        inbox_id = payload.get("inbox_id")
        if isinstance(inbox_id, int):
            return inbox_id, inboxes.get(inbox_id)
    elif task == "inboxsync.apply_change" and isinstance(first, dict):
        account_id = first.get("account_id")
        return None, account_id if isinstance(account_id, int) else None
    elif task == "inboxsync.send_reply" and isinstance(first, int) and first in replies:
        return replies[first]
    return None, None


def downgrade() -> None:
    op.drop_index("ix_dead_letters_state_created", table_name="dead_letters")
    op.drop_index("ix_dead_letters_account_state", table_name="dead_letters")
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_constraint("state_known", type_="check")
        for column in (
            "discarded_at",
            "replayed_as",
            "replayed_at",
            "replays",
            "state",
            "account_id",
            "inbox_id",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("inboxes") as batch:
        batch.drop_column("previous_secrets")
