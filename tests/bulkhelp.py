"""Helpers for bulk-job tests: many tickets at once, a publisher that keeps what it is given,
and running those chunks as a worker would."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select

from handlers import bulk_run
from settings import Settings, get_settings
from store import bulk as batch
from store.db import reading, transaction
from store.models import BulkItem, Change, Contact, Conversation, Ticket


def seed_tickets(acct: dict[str, int], n: int, location: str = "inbox") -> list[int]:
    """``n`` tickets of one conversation each, inserted in a few statements; the tickets' ids."""
    now = datetime.now(UTC)
    tag = uuid.uuid4().hex[:8]
    with transaction() as session:
        contact = Contact(account_id=acct["account"], handle=f"bulk-{tag}@example.com")
        session.add(contact)
        session.flush()
        tickets = batch.insert_many(
            session,
            Ticket,
            [
                {
                    "account_id": acct["account"],
                    "status": "new",
                    "properties": {},
                    "location": location,
                    "created_at": now,
                    "last_change_at": now,
                }
                for _ in range(n)
            ],
            returning=["id"],
        )
        ids = [t.id for t in tickets]
        batch.insert_many(
            session,
            Conversation,
            [
                {
                    "account_id": acct["account"],
                    "inbox_id": acct["inbox"],
                    "contact_id": contact.id,
                    "thread_key": f"{tag}-{t}",
                    "status": "open",
                    "location": location,
                    "ticket_id": t,
                    "created_at": now,
                    "last_message_at": now,
                    "last_change_at": now,
                }
                for t in ids
            ],
        )
    return ids


class Published:
    """A publisher (handlers/bulk.py ``Publish``) that keeps the chunks instead of sending them."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, int]] = []
        self.delays: list[float] = []

    def __call__(self, job_id: int, chunk: int, delay_s: float = 0.0) -> None:
        self.chunks.append((job_id, chunk))
        self.delays.append(delay_s)

    def run_next(self, settings: Settings | None = None) -> dict[str, int]:
        job_id, chunk = self.chunks.pop(0)
        return bulk_run.run_chunk(job_id, chunk, settings or get_settings(), self)

    def drain(self, settings: Settings | None = None) -> None:
        while self.chunks:
            self.run_next(settings)


def item_states(job_id: int) -> dict[int, tuple[str, str | None]]:
    with reading() as session:
        rows = session.execute(
            select(BulkItem.target_id, BulkItem.state, BulkItem.reason).where(
                BulkItem.job_id == job_id
            )
        )
        return {r.target_id: (r.state, r.reason) for r in rows}


def changes_per_target(job_id: int, column: str = "ticket_id") -> dict[int, int]:
    """How many recorded changes of this job name each target."""
    target = getattr(Change, column)
    with reading() as session:
        rows = session.execute(
            select(target, func.count()).where(Change.id.like(f"bulk:{job_id}:%")).group_by(target)
        )
        return {r[0]: r[1] for r in rows}
