"""What the deployment is doing, for ``inboxsync status``: each queue's depth on the broker and
the age of its oldest work in the store, the backlogs, the workers that answer, the dead letters
waiting, the replies due, the outbound events not delivered yet and the subscribers disabled,
and who holds the periodic lease.

The broker says how many messages wait; the store says how old the oldest work is, because a
message carries no age a broker will tell (and the journals outlive lost messages): the oldest
journaled delivery for ``ingest``, the oldest pending change of ``inbox`` and ``helpdesk``, the
reply longest overdue for ``outbound``, the oldest running bulk job for ``bulk``. RabbitMQ in
particular answers a queue's depth (``queue.declare``) but not the age of its oldest message:
AMQP 0-9-1 can only read a message by taking it (``basic.get``), which would hand it out, count a
delivery on a quorum queue and put it back at another place; so the report never asks, and says so.

Queues are shown by the names the code uses; on the broker each has ``INBOXSYNC_QUEUE_PREFIX``
in front (settings.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from schemas.ops import Backlog, LeaseStatus, QueueStatus, Status
from settings import QUEUES, get_settings
from store import lease
from store.db import reading
from store.models import (
    BulkJob,
    DeadLetter,
    Delivery,
    EventDelivery,
    Lease,
    OutboundEvent,
    PendingChange,
    Reply,
    Subscriber,
)

__all__ = ["QUEUES", "depth", "gather"]
PERIODIC = "periodic"  # workers/periodic.py LEASE
RECONCILE = "reconcile"  # workers/periodic.py RECONCILE_LEASE


def gather(*, ping_timeout_s: float = 1.0, now: datetime | None = None) -> Status:
    now = now or datetime.now(UTC)
    depths, broker_error = _depths()
    with reading() as session:
        journal = _backlog(session, Delivery.received_at, now)
        pending = {q: _backlog(session, PendingChange.enqueued_at, now, queue=q) for q in QUEUES}
        pending_all = _backlog(session, PendingChange.enqueued_at, now)
        due = _due_replies(session, now)
        events = events_pending(session, now)
        disabled = subscribers_disabled(session)
        running = session.scalar(
            select(func.min(BulkJob.created_at)).where(BulkJob.state == "running")
        )
        waiting = session.scalar(
            select(func.count()).select_from(DeadLetter).where(DeadLetter.state == "waiting")
        )
        expires = session.scalar(select(Lease.expires_at).where(Lease.name == PERIODIC))
        next_turn = session.scalar(select(Lease.expires_at).where(Lease.name == RECONCILE))
    oldest = {
        "ingest": (journal.oldest_age_s, "journaled delivery"),
        "inbox": (pending["inbox"].oldest_age_s, "pending change"),
        "helpdesk": (pending["helpdesk"].oldest_age_s, "pending change"),
        "outbound": (due.oldest_age_s, "reply due"),
        "bulk": (_age(running, now), "running bulk job"),
    }
    alive, note = _workers(ping_timeout_s)
    held = lease.holder_of(PERIODIC)
    reconciled = lease.holder_of(RECONCILE)
    return Status(
        queues=[
            QueueStatus(
                name=q,
                depth=depths.get(q),
                oldest_age_s=oldest.get(q, (None, ""))[0],
                oldest_of=oldest.get(q, (None, "nothing kept in the store"))[1],
            )
            for q in QUEUES
        ],
        broker_error=broker_error,
        broker_note=AGE_NOTE if get_settings().is_amqp_broker else None,
        journal=journal,
        pending_changes=pending_all,
        workers_alive=alive,
        workers_note=note,
        dead_letters_waiting=waiting or 0,
        replies_due=due.count,
        events_pending=events,
        subscribers_disabled=disabled or 0,
        periodic=None
        if held is None or expires is None
        else LeaseStatus(
            holder=held[0], rounds=held[1], expires_in_s=(expires - now).total_seconds()
        ),
        reconcile=None
        if reconciled is None or next_turn is None
        else LeaseStatus(
            holder=reconciled[0],
            rounds=reconciled[1],
            expires_in_s=(next_turn - now).total_seconds(),
        ),
    )


AGE_NOTE = (
    "RabbitMQ tells a queue's depth, not its oldest message's age (AMQP cannot read a message "
    "without taking it): the ages shown are of the work the store holds"
)


def depth(channel: Any, queue: str) -> int:
    """Messages waiting on one of ``QUEUES`` (by the code's name), read by declaring it as the
    workers do (``queue_declare``: Redis, the embedded broker, AMQP; on RabbitMQ the arguments
    must match, quorum and all, or the broker refuses)."""
    from workers.app import app

    declared = app.amqp.queues[get_settings().queue_name(queue)]
    return int(declared.queue_declare(channel=channel).message_count)


def _depths() -> tuple[dict[str, int], str | None]:
    """Messages waiting on each queue."""
    from workers.app import app

    try:
        with app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=5)
            channel = conn.default_channel
            return {q: depth(channel, q) for q in QUEUES}, None
    except Exception as exc:  # the report goes on without the broker, and says so
        return {}, f"{type(exc).__name__}: {exc}"[:300]


def _workers(timeout_s: float) -> tuple[list[str] | None, str | None]:
    """Workers that answer ``inspect ping``: remote control needs a broker that carries
    broadcasts, which the embedded one does not (celeryconfig.py)."""
    if get_settings().is_embedded_broker:
        return None, "n/a (embedded broker)"
    from workers.app import app

    try:
        answered = app.control.inspect(timeout=timeout_s).ping() or {}
    except Exception as exc:
        return None, f"could not ask: {type(exc).__name__}"
    return sorted(answered), None


def _backlog(
    session: Session,
    since: InstrumentedAttribute[datetime],
    now: datetime,
    *,
    queue: str | None = None,
) -> Backlog:
    """How many rows a journal holds, and the age of the oldest (by ``since``)."""
    query = select(func.count(), func.min(since))
    if queue is not None:
        query = query.where(PendingChange.queue == queue)
    count, oldest = session.execute(query).one()
    return Backlog(count=count, oldest_age_s=_age(oldest, now))


def _due_replies(session: Session, now: datetime) -> Backlog:
    count, oldest = session.execute(
        select(func.count(), func.min(Reply.next_attempt_at)).where(
            Reply.state == "queued", Reply.next_attempt_at <= now
        )
    ).one()
    return Backlog(count=count, oldest_age_s=_age(oldest, now))


def events_pending(session: Session, now: datetime) -> Backlog:
    """Events waiting for an enabled subscriber (a disabled one's wait is counted apart)."""
    count, oldest = session.execute(
        select(func.count(), func.min(OutboundEvent.created_at))
        .select_from(EventDelivery)
        .join(OutboundEvent, OutboundEvent.id == EventDelivery.event_id)
        .join(Subscriber, Subscriber.id == EventDelivery.subscriber_id)
        .where(EventDelivery.state == "pending", Subscriber.enabled.is_(True))
    ).one()
    return Backlog(count=count, oldest_age_s=_age(oldest, now))


def subscribers_disabled(session: Session) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Subscriber).where(Subscriber.enabled.is_(False))
        )
        or 0
    )


def _age(oldest: datetime | None, now: datetime) -> float | None:
    return None if oldest is None else max((now - oldest).total_seconds(), 0.0)
