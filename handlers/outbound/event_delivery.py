"""Outbound events from the outbox to subscribers, signed, in order, retried from the store.

1. ``fan_out`` (the periodic round, under its lease): each event not fanned out yet becomes one
   ``event_deliveries`` row per subscriber of its account that wants its type, in event order.
2. ``due`` (the round): subscribers whose head is due and who have no task outstanding; the
   round publishes ``inboxsync.deliver_events`` for each (``published_at`` records it).
3. ``send`` (the task): claims the subscriber with a lease (a conditional update: a duplicate
   task finds it taken and does nothing), then sends its pending deliveries one at a time in id
   order. Each attempt is recorded fenced by the lease holder, renewing the lease; a failure
   stops the line: that event is retried after a backoff and nothing after it goes before it
   (per-subscriber order). A subscriber failing without a success for ``events_disable_after_s``
   is disabled; re-enabling it resumes from the same event.

Retries live in the store, never in broker countdowns (a long countdown on Redis is delivered
twice: celery/kombu#337). Delivery is at least once: a worker that dies after the receiver
answered and before the commit leaves the event pending, and it is sent again with the same
``webhook-id`` for the receiver to dedupe (Standard Webhooks).
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import requests
from sqlalchemy import delete, exists, insert, or_, select, update
from standardwebhooks import Webhook

from handlers import netguard
from handlers.outbound import transport
from settings import Settings, get_settings
from store.db import reading, transaction
from store.models import EventAttempt, EventDelivery, OutboundEvent, Subscriber

DELIVER_TASK = "inboxsync.deliver_events"
PER_TASK = 100  # deliveries one task sends before it hands over to a fresh one


def webhook_id(event_id: int) -> str:
    """The event's ``webhook-id``: the same on every attempt and replay, for receivers to dedupe."""
    return f"evt_{event_id}"


def body(event: OutboundEvent) -> bytes:
    """The JSON body of an event (the same bytes on every attempt)."""
    return orjson.dumps(
        {
            "id": webhook_id(event.id),
            "type": event.type,
            "timestamp": event.created_at,
            "account_id": event.account_id,
            "data": event.data,
        },
        option=orjson.OPT_UTC_Z,
    )


def signature(secrets: list[str], msg_id: str, at: datetime, payload: bytes) -> str:
    """``webhook-signature``: one ``v1,<base64>`` per secret valid now, space-separated."""
    text = payload.decode()
    return " ".join(Webhook(s).sign(msg_id, at, text) for s in secrets)


def signing_secrets(sub: Subscriber, now: datetime) -> list[str]:
    """The current secret, and the previous one while its overlap after a rotation lasts."""
    out = [sub.secret]
    if sub.previous_secret and sub.previous_until is not None and sub.previous_until > now:
        out.append(sub.previous_secret)
    return out


def backoff(settings: Settings, failures: int) -> float:
    """Exponential, capped, with jitter: half the step fixed, half random."""
    step = min(
        settings.events_retry_max_s, settings.events_retry_base_s * 2 ** max(failures - 1, 0)
    )
    return step / 2 + random.uniform(0, step / 2)


# ---- the periodic round -----------------------------------------------------------------------


def fan_out(*, limit: int = 1000, now: datetime | None = None) -> int:
    """Make the deliveries of up to ``limit`` events not fanned out yet; how many events."""
    now = now or datetime.now(UTC)
    with transaction() as session:
        events = session.execute(
            select(OutboundEvent.id, OutboundEvent.account_id, OutboundEvent.type)
            .where(OutboundEvent.fanned_out.is_(False))
            .order_by(OutboundEvent.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if not events:
            return 0
        subs = session.execute(
            select(Subscriber.id, Subscriber.account_id, Subscriber.types).where(
                Subscriber.account_id.in_({e.account_id for e in events})
            )
        ).all()
        rows = [
            {
                "subscriber_id": s.id,
                "event_id": e.id,
                "state": "pending",
                "attempts": 0,
                "created_at": now,
            }
            for e in events
            for s in subs
            if s.account_id == e.account_id and e.type in s.types
        ]
        if rows:
            session.execute(insert(EventDelivery), rows)
        session.execute(
            update(OutboundEvent)
            .where(OutboundEvent.id.in_([e.id for e in events]))
            .values(fanned_out=True)
        )
        return len(events)


def due(*, now: datetime | None = None, limit: int = 1000) -> list[int]:
    """Subscribers with a pending delivery due now and no task outstanding (or one published
    longer than a lease ago: lost); marked published."""
    settings = get_settings()
    now = now or datetime.now(UTC)
    stale = now - timedelta(seconds=settings.events_lease_s)
    with transaction() as session:
        ids = list(
            session.scalars(
                select(Subscriber.id)
                .where(
                    Subscriber.enabled.is_(True),
                    or_(Subscriber.next_attempt_at.is_(None), Subscriber.next_attempt_at <= now),
                    or_(Subscriber.lease_until.is_(None), Subscriber.lease_until < now),
                    or_(Subscriber.published_at.is_(None), Subscriber.published_at < stale),
                    exists().where(
                        EventDelivery.subscriber_id == Subscriber.id,
                        EventDelivery.state == "pending",
                    ),
                )
                .order_by(Subscriber.id)
                .limit(limit)
            )
        )
        if ids:
            session.execute(
                update(Subscriber).where(Subscriber.id.in_(ids)).values(published_at=now)
            )
    return ids


# ---- the task ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Head:
    delivery_id: int
    event_id: int
    url: str
    secrets: list[str]
    payload: bytes


def send(subscriber_id: int) -> str:
    """Send a subscriber's pending events in order until one fails or none is left (the body of
    ``inboxsync.deliver_events``): ``skipped`` (taken, disabled or not due), ``done``,
    ``failed`` (retried later from the store) or ``more`` (publish the task again)."""
    settings = get_settings()
    holder = uuid.uuid4().hex
    if not _claim(subscriber_id, holder, settings):
        _unpublished(subscriber_id)
        return "skipped"
    try:
        for _ in range(PER_TASK):
            head = _head(subscriber_id)
            if head is None:
                return "done"
            code, error, ms = _post(head, settings)
            if not _record(subscriber_id, holder, head, code, error, ms, settings):
                return "skipped"  # our lease ran out and another worker took over
            if error is not None:
                return "failed"
        return "more"
    finally:
        _release(subscriber_id, holder)


def _claim(subscriber_id: int, holder: str, settings: Settings) -> bool:
    now = datetime.now(UTC)
    with transaction() as session:
        taken = session.execute(
            update(Subscriber)
            .where(
                Subscriber.id == subscriber_id,
                Subscriber.enabled.is_(True),
                or_(Subscriber.lease_until.is_(None), Subscriber.lease_until < now),
                or_(Subscriber.next_attempt_at.is_(None), Subscriber.next_attempt_at <= now),
            )
            .values(
                lease_holder=holder,
                lease_until=now + timedelta(seconds=settings.events_lease_s),
                published_at=None,
            )
        )
        return bool(taken.rowcount)  # type: ignore[attr-defined]


def _unpublished(subscriber_id: int) -> None:
    """A task that found the subscriber taken or not due: the round may publish it again when
    it is free and due (else it would wait a whole lease for its ``published_at`` to go stale)."""
    with transaction() as session:
        session.execute(
            update(Subscriber).where(Subscriber.id == subscriber_id).values(published_at=None)
        )


def _head(subscriber_id: int) -> Head | None:
    """The subscriber's oldest pending delivery, with what sending it takes."""
    with reading() as session:
        row = session.execute(
            select(EventDelivery.id, OutboundEvent, Subscriber)
            .join(OutboundEvent, OutboundEvent.id == EventDelivery.event_id)
            .join(Subscriber, Subscriber.id == EventDelivery.subscriber_id)
            .where(EventDelivery.subscriber_id == subscriber_id, EventDelivery.state == "pending")
            .order_by(EventDelivery.id)
            .limit(1)
        ).first()
        if row is None:
            return None
        event, sub = row.OutboundEvent, row.Subscriber
        secrets = signing_secrets(sub, datetime.now(UTC))
        return Head(row.id, event.id, sub.url, secrets, body(event))


def _post(head: Head, settings: Settings) -> tuple[int | None, str | None, int]:
    """One HTTP attempt: (status code, error or None for a 2xx, milliseconds)."""
    now = datetime.now(UTC).replace(microsecond=0)
    msg_id = webhook_id(head.event_id)
    headers = {
        "content-type": "application/json",
        "user-agent": "inboxsync-events",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature(head.secrets, msg_id, now, head.payload),
    }
    started = time.monotonic()
    code: int | None = None
    try:
        with transport.session() as http:
            answer = http.post(
                head.url,
                data=head.payload,
                headers=headers,
                timeout=settings.events_timeout_s,
                allow_redirects=False,
            )
        code = answer.status_code
        error = None if 200 <= code < 300 else f"HTTP {code}"
    except netguard.TargetError as exc:
        error = f"refused: {exc}"
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"[:2000]
    return code, error, int((time.monotonic() - started) * 1000)


def _record(
    subscriber_id: int,
    holder: str,
    head: Head,
    code: int | None,
    error: str | None,
    ms: int,
    settings: Settings,
) -> bool:
    """Log the attempt and move the line on (or back off), unless the lease was lost."""
    now = datetime.now(UTC)
    with transaction() as session:
        sub = session.scalar(
            select(Subscriber)
            .where(Subscriber.id == subscriber_id, Subscriber.lease_holder == holder)
            .with_for_update()
        )
        if sub is None:
            return False
        session.add(
            EventAttempt(
                subscriber_id=subscriber_id,
                delivery_id=head.delivery_id,
                event_id=head.event_id,
                at=now,
                status_code=code,
                error=error,
                duration_ms=ms,
            )
        )
        delivered = error is None
        session.execute(
            update(EventDelivery)
            .where(EventDelivery.id == head.delivery_id, EventDelivery.state == "pending")
            .values(
                attempts=EventDelivery.attempts + 1,
                **({"state": "delivered", "delivered_at": now} if delivered else {}),
            )
        )
        sub.lease_until = now + timedelta(seconds=settings.events_lease_s)
        if delivered:
            sub.failures, sub.failing_since, sub.next_attempt_at = 0, None, None
        else:
            _failed(sub, now, error or "", settings)
        return True


def _failed(sub: Subscriber, now: datetime, error: str, settings: Settings) -> None:
    sub.failures += 1
    sub.failing_since = sub.failing_since or now
    sub.next_attempt_at = now + timedelta(seconds=backoff(settings, sub.failures))
    failing_for = (now - sub.failing_since).total_seconds()
    if failing_for >= settings.events_disable_after_s:
        sub.enabled = False
        sub.disabled_reason = (
            f"failing for {int(failing_for)} s ({sub.failures} attempts), last: {error}"[:2000]
        )


def _release(subscriber_id: int, holder: str) -> None:
    with transaction() as session:
        session.execute(
            update(Subscriber)
            .where(Subscriber.id == subscriber_id, Subscriber.lease_holder == holder)
            .values(lease_holder=None, lease_until=None)
        )


# ---- retention --------------------------------------------------------------------------------


def prune(days: float, *, now: datetime | None = None) -> int:
    """Forget what is older than ``days``: the delivery log, delivered deliveries, and events
    no subscriber still waits for (replay reaches back this far); how many events went."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    with transaction() as session:
        session.execute(delete(EventAttempt).where(EventAttempt.at < cutoff))
        session.execute(
            delete(EventDelivery).where(
                EventDelivery.state == "delivered", EventDelivery.delivered_at < cutoff
            )
        )
        gone = select(OutboundEvent.id).where(
            OutboundEvent.created_at < cutoff,
            OutboundEvent.fanned_out.is_(True),
            ~exists().where(EventDelivery.event_id == OutboundEvent.id),
        )
        done = session.execute(delete(OutboundEvent).where(OutboundEvent.id.in_(gone)))
        return int(done.rowcount)  # type: ignore[attr-defined]
