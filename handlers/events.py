"""Outbound events into the outbox, in the transaction of what caused them.

An event is a row of ``outbound_events`` written by the same transaction as its change
(handlers/apply.py ``_record``) or its stored messages (handlers/ingest.py): the change rolls
back, its event goes with it; the change commits, its event is there. Nothing is sent from here:
the periodic round fans events out to subscribers and workers deliver them
(handlers/outbound/events.py).

Only accounts that have a subscriber get events (one query per batch), and a batch's events are
one INSERT. A change's effects name what happened, field by field (handlers/rules.py); each
effect a subscriber can care about becomes one event whose ``data`` is that effect.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from handlers.rules import MERGED
from schemas.events import EVENT_TYPES
from store.models import OutboundEvent, Subscriber


class UnknownEventType(ValueError):
    pass


def emit(
    session: Session,
    account_id: int,
    type: str,
    data: dict[str, Any],
    *,
    change_id: str | None = None,
) -> None:
    """Put one event in the outbox, in the caller's transaction (e.g. ``bulk_job.finished``
    where a bulk job records its end). Nothing is written for an account without subscribers."""
    emit_many(session, [(account_id, type, data, change_id)])


Pending = tuple[int, str, dict[str, Any], str | None]  # (account, type, data, change id)


def emit_many(session: Session, events: Iterable[Pending], *, now: datetime | None = None) -> int:
    """Put a batch of events in the outbox: one query for which accounts have subscribers, one
    INSERT for their events; how many were written."""
    events = list(events)
    for _, kind, _, _ in events:
        if kind not in EVENT_TYPES:
            raise UnknownEventType(f"unknown event type {kind!r}")
    accounts = {account for account, *_ in events}
    if not accounts:
        return 0
    subscribed = set(
        session.scalars(
            select(Subscriber.account_id).where(Subscriber.account_id.in_(accounts)).distinct()
        )
    )
    now = now or datetime.now(UTC)
    rows = [
        {"account_id": a, "type": t, "data": d, "change_id": cid, "created_at": now}
        for a, t, d, cid in events
        if a in subscribed
    ]
    if rows:
        session.execute(insert(OutboundEvent), rows)
    return len(rows)


def of_effect(effect: dict[str, Any]) -> str | None:
    """The event type an effect (``Effect.as_dict()``) is announced as; None: not announced
    (a ticket association, a merge: M2 moves messages, it deletes nothing a user made)."""
    field, value = effect["field"], effect["value"]
    if field == "created":
        return "ticket.created"
    if field == "owner_id":
        return "owner.changed"
    if field == "status":
        return "status.changed"
    if field == "location":
        return "ticket.moved"
    if field == "removed_by":
        if value is None:
            return "restored"
        return None if str(value).startswith(MERGED) else "deleted"
    return None


def of_effects(account_id: int, change_id: str, effects: Iterable[dict[str, Any]]) -> list[Pending]:
    """The events of one change's effects, each effect's dict as the event's ``data``."""
    out: list[Pending] = []
    for e in effects:
        if (kind := of_effect(e)) is not None:
            out.append((account_id, kind, {**e, "change_id": change_id}, change_id))
    return out
