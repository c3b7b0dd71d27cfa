"""From a broker message to the store: what the thin Celery tasks in workers/tasks.py call.

A delivery is one accepted webhook payload::

    {"inbox_id": 7, "provider": "generic", "received_at": "2026-…Z", "payload": {...}}

The ingress journals deliveries in the store (``journal``) and enqueues their ids; a worker
claims a batch of ids, normalizes, and stores them in one transaction (``process_deliveries``).
A delivery that cannot be normalized, or that makes its batch fail for a reason other than a
transient one, ends in a dead-letter record; the rest of the batch is stored. Transient errors
(the database went away, a lock timed out) propagate, so that Celery retries the whole task:
what was committed before is deduplicated on the second run.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import Row, delete, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from handlers import apply, routing
from handlers.channels import adapter_for
from handlers.channels.base import WebhookError
from handlers.ingest import ingest
from schemas import changes as c
from schemas.inbound import InboundMessage
from settings import Settings, get_settings
from store import bulk, cases
from store.blobs import BlobWriteError, blob_store
from store.db import is_postgres, transaction
from store.models import Account, Conversation, DeadLetter, Delivery, Ticket, WebhookToken

# Worth retrying: the database, a lock or the blob store's disk, not the payload. IntegrityError
# is here because two workers racing on one new row make one of them fail once; the retry finds
# the row.
TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.IntegrityError,
    BlobWriteError,
)

INGEST_TASK = "inboxsync.ingest_batch"
APPLY_TASK = "inboxsync.apply_change"


def delivery(inbox_id: int, provider: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One accepted webhook payload, as the ingress hands it over."""
    return {
        "inbox_id": inbox_id,
        "provider": provider,
        "received_at": datetime.now(UTC).isoformat(),
        "payload": payload,
    }


def journal(deliveries: list[dict[str, Any]]) -> list[int]:
    """Keep accepted deliveries durably in the store (one commit); returns their ids.

    This is what makes a 2xx safe: the broker message that follows carries only these ids, and a
    lost broker message is made good by ``sweep``. A delivery with a ``replay_key`` already seen
    (a replayed request) is left out, in the same transaction that remembers the new keys."""
    now = datetime.now(UTC)
    with transaction() as session:
        deliveries = _first_time(session, deliveries, now)
        rows = [
            {
                "inbox_id": d["inbox_id"],
                "provider": d["provider"],
                "received_at": datetime.fromisoformat(d["received_at"]),
                "enqueued_at": now,
                "payload": d["payload"],
            }
            for d in deliveries
        ]
        if not rows:
            return []
        if is_postgres(session):
            return [r.id for r in bulk.insert(session, Delivery, rows, returning=["id"])]
        return list(session.scalars(insert(Delivery).returning(Delivery.id), rows).all())


def _first_time(
    session: Session, deliveries: list[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    if not any(d.get("replay_key") for d in deliveries):
        return deliveries
    dialect_insert = postgresql.insert if is_postgres(session) else sqlite.insert
    kept = []
    for d in deliveries:  # few carry a key: only providers with one-time tokens set them
        if d.get("replay_key"):
            first = session.execute(
                dialect_insert(WebhookToken)
                .values(inbox_id=d["inbox_id"], token=d["replay_key"], seen_at=now)
                .on_conflict_do_nothing()
                .returning(WebhookToken.token)
            ).first()
            if first is None:
                continue  # seen before (in this batch or within the window): a replay
        kept.append(d)
    return kept


def forget_tokens(older_than_s: float) -> int:
    """Drop one-time tokens older than the signature window: a request that old is refused
    by its signature check anyway."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    with transaction() as session:
        gone = session.scalars(
            delete(WebhookToken).where(WebhookToken.seen_at < cutoff).returning(WebhookToken.token)
        ).all()
        return len(gone)


def sweep(older_than_s: float, limit: int = 1000) -> list[int]:
    """Ids of deliveries enqueued more than ``older_than_s`` ago and still not stored.

    They are marked enqueued now, so that each is handed out again at most once per period; the
    caller publishes them. A second copy of a delivery that was only slow is harmless: the worker
    that gets it second finds its row gone."""
    now = datetime.now(UTC)
    with transaction() as session:
        ids = session.scalars(
            select(Delivery.id)
            .where(Delivery.enqueued_at < now - timedelta(seconds=older_than_s))
            .order_by(Delivery.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if ids:
            session.execute(
                update(Delivery)
                .where(bulk.among(session, Delivery.id, ids))
                .values(enqueued_at=now)
            )
    return list(ids)


def normalize(d: dict[str, Any]) -> list[InboundMessage]:
    try:
        inbox_id, provider = int(d["inbox_id"]), str(d["provider"])
        received_at = datetime.fromisoformat(d["received_at"])
        payload = d["payload"]
    except (KeyError, TypeError, ValueError) as exc:
        raise WebhookError(f"malformed delivery: {exc!r}") from None
    try:
        return adapter_for(provider).normalize(inbox_id, received_at, payload)
    except ValidationError as exc:
        raise WebhookError(str(exc)) from None


def ingest_deliveries(deliveries: list[dict[str, Any]], task_id: str | None) -> dict[str, int]:
    """Journal and store deliveries at once (what ingress + worker do, in one call)."""
    return process_deliveries(journal(deliveries), task_id)


def process_deliveries(ids: list[int], task_id: str | None) -> dict[str, int]:
    """Store the journaled deliveries ``ids``; returns counts (stored, duplicate, dead, gone).

    One transaction for the batch: the messages, the dead letters of deliveries that cannot be
    normalized, and the deletion of the journal rows commit together, so each delivery is
    processed once however often its id is delivered. If the batch fails for a reason that is not
    transient, each delivery is tried alone and the one that fails goes to the dead letters."""
    extra = max(0, get_settings().ingest_claim_max - len(ids))
    try:
        return _process(ids, task_id, extra=extra)
    except TRANSIENT_DB_ERRORS:
        raise
    except Exception:
        if len(ids) <= 1:
            return _bury(ids, task_id)
    counts = {"stored": 0, "duplicate": 0, "dead": 0, "gone": 0}
    for one in ids:
        try:
            part = _process([one], task_id)
        except TRANSIENT_DB_ERRORS:
            raise
        except Exception:
            part = _bury([one], task_id)
        for key, value in part.items():
            counts[key] += value
    return counts


_JOURNAL_COLUMNS = (
    Delivery.id,
    Delivery.inbox_id,
    Delivery.provider,
    Delivery.received_at,
    Delivery.payload,
)


def _claim(session: Session, ids: list[int], extra: int = 0) -> list[Row[Any]]:
    """Lock the journal rows ``ids`` that are still there, and up to ``extra`` more.

    The extra rows are the oldest pending ones: under load a worker stores what has piled up in
    one transaction instead of one small batch per broker message (their own messages, when they
    come, find the rows gone). SKIP LOCKED: a row another worker is storing is that worker's."""
    rows = list(
        session.execute(
            select(*_JOURNAL_COLUMNS)
            .where(bulk.among(session, Delivery.id, ids))
            .order_by(Delivery.id)
            .with_for_update(skip_locked=True)
        )
    )
    if extra:
        rows += session.execute(
            select(*_JOURNAL_COLUMNS)
            .where(bulk.not_among(session, Delivery.id, ids))
            .order_by(Delivery.id)
            .limit(extra)
            .with_for_update(skip_locked=True)
        ).all()
    return rows


def _as_delivery(row: Row[Any]) -> dict[str, Any]:
    return {
        "inbox_id": row.inbox_id,
        "provider": row.provider,
        "received_at": cases.aware(row.received_at).isoformat(),
        "payload": row.payload,
    }


def _process(ids: list[int], task_id: str | None, extra: int = 0) -> dict[str, int]:
    with transaction() as session:
        rows = _claim(session, ids, extra)
        messages: list[InboundMessage] = []
        dead: list[tuple[dict[str, Any], BaseException]] = []
        for row in rows:
            d = _as_delivery(row)
            try:
                messages.extend(normalize(d))
            except WebhookError as exc:
                dead.append((d, exc))
        # Attachment bytes first: once the messages commit, their blobs are on disk.
        blob_store().put_all(blob for m in messages for blob in m.blobs)
        outcomes = ingest(session, messages) if messages else []
        _insert_dead_letters(session, INGEST_TASK, task_id, dead)
        session.execute(
            delete(Delivery).where(bulk.among(session, Delivery.id, [r.id for r in rows]))
        )
    duplicates = sum(1 for o in outcomes if o.duplicate)
    return {
        "stored": len(outcomes) - duplicates,
        "duplicate": duplicates,
        "dead": len(dead),
        "gone": max(0, len(ids) - len(rows)),
    }


def _bury(ids: list[int], task_id: str | None) -> dict[str, int]:
    """Dead-letter deliveries that fail on their own, with the error, and drop their rows."""
    try:
        _process(ids, task_id)
    except TRANSIENT_DB_ERRORS:
        raise
    except Exception as exc:
        error = exc
    else:
        return {"stored": 0, "duplicate": 0, "dead": 0, "gone": len(ids)}
    with transaction() as session:
        rows = _claim(session, ids)
        _insert_dead_letters(
            session, INGEST_TASK, task_id, [(_as_delivery(r), error) for r in rows]
        )
        session.execute(
            delete(Delivery).where(bulk.among(session, Delivery.id, [r.id for r in rows]))
        )
    return {"stored": 0, "duplicate": 0, "dead": len(rows), "gone": len(ids) - len(rows)}


def run_change(envelope: dict[str, Any], settings: Settings | None = None) -> dict[str, Any]:
    """Apply one change envelope (see handlers/apply.py) and commit."""
    env = c.ChangeEnvelope.model_validate(envelope)
    with transaction() as session:
        result = apply.apply_change(session, env, settings or get_settings())
    return result.model_dump(mode="json")


def queue_for_action(session: Session, action: c.Action, settings: Settings) -> str:
    """R1/R2 routing of ticket work: the queue of the ticket's (or the new ticket's) location."""
    ticket_id = getattr(action, "ticket_id", None)
    conv_id = getattr(action, "conversation_id", None)
    if ticket_id is not None:
        location = session.scalar(select(Ticket.location).where(Ticket.id == ticket_id))
    elif isinstance(action, c.CreateTicket):
        row = session.execute(
            select(Conversation.location, Conversation.ticket_id, Account.tier, Account.created_at)
            .join(Account, Account.id == Conversation.account_id)
            .where(Conversation.id == action.conversation_id)
        ).first()
        if row is None:
            location = None
        elif row.ticket_id is not None:
            location = row.location
        else:
            created = row.created_at
            created = created if created.tzinfo else created.replace(tzinfo=UTC)
            location = routing.ticket_location(
                row.tier,
                created,
                cutoff=settings.helpdesk_cutoff,
                helpdesk_tiers=settings.helpdesk_tiers,
            )
    else:
        location = session.scalar(select(Conversation.location).where(Conversation.id == conv_id))
    return routing.queue_for(location or "inbox")


def fingerprint(task: str, payload: Any) -> str:
    return hashlib.sha256(
        task.encode() + b"\0" + orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
    ).hexdigest()


def record_dead_letters(
    task: str,
    task_id: str | None,
    items: list[tuple[dict[str, Any], BaseException]],
    *,
    attempts: int = 1,
    key: str | None = None,
) -> None:
    """Keep each payload with its error, once (recording again is a no-op)."""
    if not items:
        return
    with transaction() as session:
        _insert_dead_letters(session, task, task_id, items, attempts=attempts, key=key)


def _insert_dead_letters(
    session: Session,
    task: str,
    task_id: str | None,
    items: list[tuple[dict[str, Any], BaseException]],
    *,
    attempts: int = 1,
    key: str | None = None,
) -> None:
    if not items:
        return
    insert = postgresql.insert if is_postgres(session) else sqlite.insert
    rows = [
        {
            "fingerprint": fingerprint(task, payload),
            "key": key,
            "task": task,
            "task_id": task_id,
            "payload": payload,
            "error_type": type(error).__name__,
            "error": str(error)[:10_000],
            "attempts": attempts,
            "created_at": datetime.now(UTC),
        }
        for payload, error in items
    ]
    session.execute(insert(DeadLetter).on_conflict_do_nothing(index_elements=["fingerprint"]), rows)
