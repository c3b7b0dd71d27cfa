"""The journals: what the HTTP service accepted, kept in the store before it answers.

- **Deliveries** (webhooks): ``journal`` writes accepted payloads in one commit and returns their
  ids; the broker then carries only the ids. A worker deletes a delivery's row in the transaction
  that stores it (handlers/pipeline.py); ``sweep`` finds rows whose broker message was lost.
- **Pending changes** (API writes): ``pend`` records a change before it is published;
  the worker that applies it deletes the row (handlers/apply.py); ``sweep_changes`` finds lost
  ones. ``GET /changes/{id}`` answers ``pending`` from it, never 404.
- **One-time tokens** (Mailgun's ``token``): a replayed request is journaled once.

The store is the one durable place; the broker is a fast doorbell.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, case, delete, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store import bulk
from store.db import is_postgres, transaction
from store.models import Delivery, PendingChange, WebhookToken

# A payload whose JSON holds a NUL character (``\u0000``) is journaled as base64 of that JSON:
# PostgreSQL's json refuses the character, and what was acknowledged must be kept whole.
WRAPPED = "json_b64"


def delivery(inbox_id: int, provider: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One accepted webhook payload, as the ingress hands it over."""
    return {
        "inbox_id": inbox_id,
        "provider": provider,
        "received_at": datetime.now(UTC).isoformat(),
        "payload": payload,
    }


def storable(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` in a form any store keeps as it is (see ``WRAPPED``)."""
    raw = orjson.dumps(payload)
    if b"\\u0000" not in raw:
        return payload
    return {WRAPPED: base64.b64encode(raw).decode()}


def unwrapped(payload: dict[str, Any]) -> dict[str, Any]:
    if set(payload) == {WRAPPED}:
        return orjson.loads(base64.b64decode(payload[WRAPPED]))  # type: ignore[no-any-return]
    return payload


def journal(deliveries: list[dict[str, Any]]) -> list[int | None]:
    """Keep accepted deliveries durably in the store (one commit); the id of each, in order.

    This is what makes a 2xx safe: the broker message that follows carries only these ids, and a
    lost broker message is made good by ``sweep``. A delivery with a ``replay_key`` already seen
    (a replayed request) is left out (its id is None), in the same transaction that remembers the
    new keys."""
    now = datetime.now(UTC)
    with transaction() as session:
        kept = _first_time(session, deliveries, now)
        rows = [
            {
                "inbox_id": deliveries[i]["inbox_id"],
                "provider": deliveries[i]["provider"],
                "received_at": datetime.fromisoformat(deliveries[i]["received_at"]),
                "enqueued_at": now,
                "payload": storable(deliveries[i]["payload"]),
            }
            for i in kept
        ]
        made = bulk.insert_many(session, Delivery, rows, returning=("id",))
    ids: list[int | None] = [None] * len(deliveries)
    for i, row in zip(kept, made, strict=True):
        ids[i] = row.id
    return ids


def _first_time(session: Session, deliveries: list[dict[str, Any]], now: datetime) -> list[int]:
    """Indexes of the deliveries to journal: all but replays of a one-time token (seen before,
    or earlier in this group). One statement for the group's tokens, inserted in key order so
    that two group commits sharing tokens wait for each other instead of deadlocking."""
    keyed: dict[tuple[int, str], int] = {}  # each token's first delivery in the group
    for i, d in enumerate(deliveries):
        if d.get("replay_key"):
            keyed.setdefault((int(d["inbox_id"]), str(d["replay_key"])), i)
    if not keyed:
        return list(range(len(deliveries)))
    dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
    rows = [{"inbox_id": k[0], "token": k[1], "seen_at": now} for k in sorted(keyed)]
    fresh = {
        (r.inbox_id, r.token)
        for r in session.execute(
            dialect_insert(WebhookToken)
            .values(rows)
            .on_conflict_do_nothing()
            .returning(WebhookToken.inbox_id, WebhookToken.token)
        )
    }
    first = {i for key, i in keyed.items() if key in fresh}
    return [i for i, d in enumerate(deliveries) if not d.get("replay_key") or i in first]


def forget_tokens(older_than_s: float) -> int:
    """Drop one-time tokens older than the signature window: a request that old is refused
    by its signature check anyway."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    with transaction() as session:
        gone = session.scalars(
            delete(WebhookToken).where(WebhookToken.seen_at < cutoff).returning(WebhookToken.token)
        ).all()
        return len(gone)


# A row the sweep found again waits twice as long each time, up to this many periods: when
# workers are only behind, re-publishing every pending row each period floods the broker with
# copies (a chaos run turned 850 pending changes into 32,000 broker messages), while a row whose
# broker message was really lost is still published again within 16 periods.
BACKOFF_MAX_DOUBLINGS = 4


def doubled(column: Any, count: Any, now: datetime, step_s: float) -> Any:
    """``now + step_s × 2^count`` (the doubling capped at ``BACKOFF_MAX_DOUBLINGS``) as one SQL
    CASE over bound times, the same on both stores, typed as ``column`` so that each store
    compares times as it stores them. A negative ``step_s`` gives the cut-off in the past."""
    times = [now + timedelta(seconds=step_s * 2**n) for n in range(BACKOFF_MAX_DOUBLINGS + 1)]
    bound = [literal(at, type_=column.type) for at in times]
    return case(*((count == n, bound[n]) for n in range(BACKOFF_MAX_DOUBLINGS)), else_=bound[-1])


def _due(column: Any, republished: Any, now: datetime, older_than_s: float) -> Any:
    """Rows whose last publish is older than ``older_than_s`` × 2^republished (capped); the
    first test keeps the index."""
    first = now - timedelta(seconds=older_than_s)
    return and_(column < first, column < doubled(column, republished, now, -older_than_s))


def sweep(older_than_s: float, limit: int = 1000) -> list[int]:
    """Ids of deliveries enqueued more than ``older_than_s`` ago (doubled for each earlier
    re-publish, see ``BACKOFF_MAX_DOUBLINGS``) and still not stored.

    They are marked enqueued now, so that each is handed out again at most once per period; the
    caller publishes them. A second copy of a delivery that was only slow is harmless: the worker
    that gets it second finds its row gone."""
    now = datetime.now(UTC)
    with transaction() as session:
        ids = session.scalars(
            select(Delivery.id)
            .where(_due(Delivery.enqueued_at, Delivery.republished, now, older_than_s))
            .order_by(Delivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if ids:
            session.execute(
                update(Delivery)
                .where(bulk.among(session, Delivery.id, ids))
                .values(enqueued_at=now, republished=Delivery.republished + 1)
            )
    return list(ids)


def pend(change_id: str, account_id: int, queue: str, envelope: dict[str, Any]) -> bool:
    """Record an API change as pending before it is published; False if it is pending already
    (a retry with the same Idempotency-Key: nothing more is published)."""
    with transaction() as session:
        dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
        made = session.execute(
            dialect_insert(PendingChange)
            .values(
                id=change_id,
                account_id=account_id,
                queue=queue,
                envelope=envelope,
                enqueued_at=datetime.now(UTC),
            )
            .on_conflict_do_nothing()
            .returning(PendingChange.id)
        ).first()
    return made is not None


def sweep_changes(older_than_s: float, limit: int = 1000) -> list[tuple[str, dict[str, Any]]]:
    """(queue, envelope) of the pending changes enqueued more than ``older_than_s`` ago (with the
    same backoff as ``sweep``), marked enqueued now; the caller publishes them again (a second
    copy is a no-op: changes have ids)."""
    now = datetime.now(UTC)
    with transaction() as session:
        rows = session.execute(
            select(PendingChange.id, PendingChange.queue, PendingChange.envelope)
            .where(_due(PendingChange.enqueued_at, PendingChange.republished, now, older_than_s))
            .order_by(PendingChange.enqueued_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if rows:
            session.execute(
                update(PendingChange)
                .where(PendingChange.id.in_([r.id for r in rows]))
                .values(enqueued_at=now, republished=PendingChange.republished + 1)
            )
    return [(r.queue, r.envelope) for r in rows]
