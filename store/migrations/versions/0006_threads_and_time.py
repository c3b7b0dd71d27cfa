"""threads as a graph of ids, one clock for order, delivery outcomes, pending changes

- ``threads`` keeps every id a message names (not only a thread key), so a message joins the
  conversation of any id it shares with one whatever the order they arrive in; its
  ``conversation_id`` is empty only inside the transaction that locks a new id.
- ``messages.stored_at``: when a message was stored, its place in its case's history (the sender's
  ``sent_at`` is only shown); ``messages.provider_id``.
- ``conversations.merged_into``: a conversation found to be part of another's thread.
- ``delivery_outcomes``: what became of each accepted delivery; ``pending_changes``: API writes
  queued and not applied yet.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Delivery ids name their outcomes for good: SQLite must not reuse a deleted one.
        with op.batch_alter_table(
            "deliveries", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass
    with op.batch_alter_table("threads") as batch:
        batch.alter_column("conversation_id", existing_type=Id, nullable=True)
        batch.create_index("ix_threads_conversation_id", ["conversation_id"])
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("merged_into", Id, nullable=True))
        batch.create_foreign_key(
            "fk_conversations_merged_into", "conversations", ["merged_into"], ["id"]
        )
        batch.create_index("ix_conversations_contact_id", ["contact_id"])
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("provider_id", sa.String(length=500), nullable=True))
        batch.add_column(sa.Column("stored_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE messages SET stored_at = received_at")
    with op.batch_alter_table("messages") as batch:
        batch.alter_column("stored_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.create_index(
            "ix_messages_inbox_provider_id",
            ["inbox_id", "provider_id"],
            postgresql_where=sa.text("provider_id IS NOT NULL"),
            sqlite_where=sa.text("provider_id IS NOT NULL"),
        )
    op.create_table(
        "delivery_outcomes",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("inbox_id", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('stored','duplicate','dead')", name="state_known"),
    )
    op.create_table(
        "pending_changes",
        sa.Column("id", sa.String(length=200), primary_key=True),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("queue", sa.String(length=20), nullable=False),
        sa.Column("envelope", sa.JSON(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_pending_changes_enqueued_at", "pending_changes", ["enqueued_at"])
    _link_stored_mail()


def _link_stored_mail() -> None:
    """Record the ids stored mails name (their own Message-ID and those they answer) against
    their conversations, so that mail arriving after the upgrade finds them."""
    conn = op.get_bind()
    messages = sa.table(
        "messages",
        sa.column("id", sa.BigInteger()),
        sa.column("inbox_id", sa.BigInteger()),
        sa.column("conversation_id", sa.BigInteger()),
        sa.column("external_id", sa.String()),
        sa.column("headers", sa.JSON()),
    )
    threads = sa.table(
        "threads",
        sa.column("inbox_id", sa.BigInteger()),
        sa.column("thread_key", sa.String()),
        sa.column("conversation_id", sa.BigInteger()),
    )
    known = {(r.inbox_id, r.thread_key) for r in conn.execute(sa.select(threads))}
    last = 0
    while True:
        rows = conn.execute(
            sa.select(messages)
            .where(messages.c.id > last, messages.c.external_id.like("mid:%"))
            .order_by(messages.c.id)
            .limit(1000)
        ).all()
        if not rows:
            return
        last = rows[-1].id
        new = []
        for row in rows:
            mail = (row.headers or {}).get("email") or {}
            refs = [*(mail.get("in_reply_to") or []), *(mail.get("references") or [])]
            for key in [row.external_id, *(f"mid:{ref}" for ref in refs)]:
                if (row.inbox_id, key[:500]) not in known:
                    known.add((row.inbox_id, key[:500]))
                    new.append(
                        {
                            "inbox_id": row.inbox_id,
                            "thread_key": key[:500],
                            "conversation_id": row.conversation_id,
                        }
                    )
        if new:
            conn.execute(sa.insert(threads), new)


def downgrade() -> None:
    op.drop_index("ix_pending_changes_enqueued_at", table_name="pending_changes")
    op.drop_table("pending_changes")
    op.drop_table("delivery_outcomes")
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_inbox_provider_id")
        batch.drop_column("stored_at")
        batch.drop_column("provider_id")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_index("ix_conversations_contact_id")
        batch.drop_constraint("fk_conversations_merged_into", type_="foreignkey")
        batch.drop_column("merged_into")
    op.execute("DELETE FROM threads WHERE conversation_id IS NULL")
    with op.batch_alter_table("threads") as batch:
        batch.drop_index("ix_threads_conversation_id")
        batch.alter_column("conversation_id", existing_type=Id, nullable=False)
