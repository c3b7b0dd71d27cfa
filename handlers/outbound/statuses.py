"""What chat providers say about the messages we sent (status callbacks): delivered, read,
failed. Kept by the provider's message id in ``provider_statuses``, moving forward only (sent →
delivered → read; failed is final), so callbacks in any order, or repeated, end in the same state,
and one that arrives before the worker recorded the id is not lost."""

from __future__ import annotations

from sqlalchemy import case, literal
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from schemas.inbound import DeliveryUpdate
from store.db import is_postgres
from store.models import ProviderStatus

RANK = {"sent": 1, "delivered": 2, "read": 3, "failed": 4}


def record(session: Session, updates: list[DeliveryUpdate]) -> None:
    dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
    for u in updates:
        stmt = dialect_insert(ProviderStatus).values(
            inbox_id=u.inbox_id,
            provider_message_id=u.provider_message_id,
            state=u.state,
            error=u.error,
            at=u.at,
        )
        current = case(
            *((ProviderStatus.state == name, rank) for name, rank in RANK.items()), else_=0
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["inbox_id", "provider_message_id"],
                set_={
                    "state": stmt.excluded.state,
                    "error": stmt.excluded.error,
                    "at": stmt.excluded.at,
                },
                where=current < literal(RANK[u.state]),
            )
        )
