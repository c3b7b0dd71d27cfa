"""Subscribers of outbound events, validated in one place for the API (api/subscribers.py) and
the CLI (cli/events.py): made, changed (URL, types, re-enabled), deleted, their secret rotated,
their delivery log read, events replayed.

A URL is checked when saved: ``https://`` with a public host (handlers/netguard.py); plain
``http://`` and loopback or private addresses only when the operator allows them
(``INBOXSYNC_OUTBOUND_ALLOW_PRIVATE``). Workers check again when they connect: that check counts.
``account_id`` ``None`` is the admin; another account's subscriber is ``NotFound``. Errors are
handlers/admin.py's: ``Invalid`` (422, exit 2) and ``NotFound`` (404, exit 2).
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from handlers import netguard
from handlers.admin import Invalid, NotFound
from handlers.outbound.event_delivery import webhook_id
from schemas.events import AttemptOut, EventsReplayIn, SubscriberIn, SubscriberOut, SubscriberPatch
from settings import get_settings
from store.db import reading, transaction
from store.models import Account, EventAttempt, EventDelivery, OutboundEvent, Subscriber


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def check_url(url: str) -> str:
    allow = get_settings().outbound_allow_private
    parts = urlsplit(url)
    if parts.scheme != "https" and not (allow and parts.scheme == "http"):
        raise Invalid("url: must be https:// (http:// only where the operator allows private)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Invalid("url: the port is not a number") from None
    if not parts.hostname or parts.username or parts.password:
        raise Invalid("url: needs a host, and no user or password in it")
    try:
        netguard.check_saved(parts.hostname, port, allow_private=allow)
    except netguard.TargetRefused as exc:
        raise Invalid(f"url: {exc}") from None
    return url


def _pending(session: Session, ids: list[int]) -> dict[int, int]:
    """How many events wait for each of these subscribers, in one query."""
    rows = session.execute(
        select(EventDelivery.subscriber_id, func.count())
        .where(EventDelivery.subscriber_id.in_(ids), EventDelivery.state == "pending")
        .group_by(EventDelivery.subscriber_id)
    ).all()
    return {sid: int(n) for sid, n in rows}


def out(
    session: Session, sub: Subscriber, *, secret: bool = False, pending: int | None = None
) -> SubscriberOut:
    if pending is None:
        pending = _pending(session, [sub.id]).get(sub.id, 0)
    now = datetime.now(UTC)
    overlap = sub.previous_until if sub.previous_until and sub.previous_until > now else None
    return SubscriberOut(
        id=sub.id,
        account_id=sub.account_id,
        url=sub.url,
        types=list(sub.types),
        enabled=sub.enabled,
        disabled_reason=sub.disabled_reason,
        failures=sub.failures,
        failing_since=sub.failing_since,
        next_attempt_at=sub.next_attempt_at,
        pending=pending,
        created_at=sub.created_at,
        secret=sub.secret if secret else None,
        previous_secret_until=overlap,
    )


def _mine(
    session: Session, subscriber_id: int, account_id: int | None, *, lock: bool = True
) -> Subscriber:
    """The caller's subscriber (locked for a write), or ``NotFound``."""
    sub = session.get(Subscriber, subscriber_id, with_for_update=lock)
    if sub is None or (account_id is not None and sub.account_id != account_id):
        raise NotFound(f"subscriber {subscriber_id} not found")
    return sub


def create(account_id: int, body: SubscriberIn) -> SubscriberOut:
    url = check_url(body.url)
    with transaction() as session:
        if session.get(Account, account_id) is None:
            raise NotFound(f"account {account_id} not found")
        sub = Subscriber(
            account_id=account_id,
            url=url,
            types=sorted(set(body.types)),
            secret=new_secret(),
            enabled=True,
            failures=0,
            created_at=datetime.now(UTC),
        )
        session.add(sub)
        session.flush()
        return out(session, sub, secret=True)


def listed(account_id: int | None, *, after_id: int = 0, limit: int = 50) -> list[SubscriberOut]:
    with reading() as session:
        query = select(Subscriber).where(Subscriber.id > after_id)
        if account_id is not None:
            query = query.where(Subscriber.account_id == account_id)
        subs = session.scalars(query.order_by(Subscriber.id).limit(limit)).all()
        waiting = _pending(session, [s.id for s in subs])
        return [out(session, s, pending=waiting.get(s.id, 0)) for s in subs]


def get(subscriber_id: int, account_id: int | None) -> SubscriberOut:
    with reading() as session:
        return out(session, _mine(session, subscriber_id, account_id, lock=False))


def update(subscriber_id: int, body: SubscriberPatch, account_id: int | None) -> SubscriberOut:
    """Change URL and types; ``enabled`` true re-enables (its failure count starts again and
    its line resumes where it stopped), false pauses it (events keep queueing)."""
    url = check_url(body.url) if body.url is not None else None
    with transaction() as session:
        sub = _mine(session, subscriber_id, account_id)
        if url is not None:
            sub.url = url
        if body.types is not None:
            sub.types = sorted(set(body.types))
        if body.enabled is True and not sub.enabled:
            sub.enabled, sub.disabled_reason = True, None
            sub.failures, sub.failing_since, sub.next_attempt_at = 0, None, None
        elif body.enabled is False:
            sub.enabled, sub.disabled_reason = False, "disabled through the API"
        return out(session, sub)


def remove(subscriber_id: int, account_id: int | None) -> None:
    with transaction() as session:
        sub = _mine(session, subscriber_id, account_id)
        for model in (EventAttempt, EventDelivery):
            session.execute(delete(model).where(model.subscriber_id == sub.id))
        session.delete(sub)


def rotate_secret(subscriber_id: int, account_id: int | None) -> SubscriberOut:
    """A new secret; the one it replaces still signs (beside it) for the overlap setting."""
    overlap = timedelta(seconds=get_settings().events_secret_overlap_s)
    with transaction() as session:
        sub = _mine(session, subscriber_id, account_id)
        sub.previous_secret, sub.secret = sub.secret, new_secret()
        sub.previous_until = datetime.now(UTC) + overlap
        return out(session, sub, secret=True)


def attempts(
    subscriber_id: int, account_id: int | None, *, after_id: int = 0, limit: int = 50
) -> list[AttemptOut]:
    """The delivery log, oldest first."""
    with reading() as session:
        _mine(session, subscriber_id, account_id, lock=False)
        rows = session.execute(
            select(EventAttempt, OutboundEvent.type)
            .join(OutboundEvent, OutboundEvent.id == EventAttempt.event_id)
            .where(EventAttempt.subscriber_id == subscriber_id, EventAttempt.id > after_id)
            .order_by(EventAttempt.id)
            .limit(limit)
        ).all()
        return [_attempt(r.EventAttempt, r.type) for r in rows]


def _attempt(a: EventAttempt, kind: str) -> AttemptOut:
    return AttemptOut(
        id=a.id,
        event_id=a.event_id,
        webhook_id=webhook_id(a.event_id),
        type=kind,
        at=a.at,
        status_code=a.status_code,
        error=a.error,
        duration_ms=a.duration_ms,
    )


def replay(subscriber_id: int, body: EventsReplayIn, account_id: int | None) -> int:
    """Queue again, after what is pending, the subscriber's events named by ``body`` that it
    wants (one event, or those made in ``[from, to)``); how many. Each goes with its own
    ``webhook-id``: a receiver that has it already knows it is a copy."""
    with transaction() as session:
        sub = _mine(session, subscriber_id, account_id)
        query = select(OutboundEvent.id).where(
            OutboundEvent.account_id == sub.account_id,
            OutboundEvent.type.in_(list(sub.types)),
            OutboundEvent.fanned_out.is_(True),  # the others are on their way already
        )
        if body.event_id is not None:
            query = query.where(OutboundEvent.id == body.event_id)
        if body.from_ is not None:
            query = query.where(OutboundEvent.created_at >= body.from_)
        if body.to is not None:
            query = query.where(OutboundEvent.created_at < body.to)
        ids = list(session.scalars(query.order_by(OutboundEvent.id).limit(100_000)))
        if body.event_id is not None and not ids:
            raise NotFound(f"event {body.event_id} not found for subscriber {subscriber_id}")
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = [
            {
                "subscriber_id": sub.id,
                "event_id": i,
                "state": "pending",
                "attempts": 0,
                "created_at": now,
            }
            for i in ids
        ]
        if rows:
            session.execute(insert(EventDelivery), rows)
        return len(rows)
