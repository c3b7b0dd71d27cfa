"""From a broker message to the store: what the thin Celery tasks in workers/tasks.py call.

A delivery is one accepted webhook payload::

    {"inbox_id": 7, "provider": "generic", "received_at": "2026-…Z", "payload": {...}}

The ingress journals deliveries in the store (handlers/journal.py) and enqueues their ids; a
worker locks exactly those rows, normalizes, and stores them in one transaction
(``process_deliveries``), with each delivery's outcome (``GET /deliveries/{id}``). A delivery
that cannot be normalized, or that makes its batch fail for a reason other than a transient one,
ends in a dead-letter record; the rest of the batch is stored. Transient errors (the database
went away, a lock timed out) propagate, so that Celery retries the whole task: what was
committed before is deduplicated on the second run.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Row, delete, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from handlers import apply, deadletters, edits, journal, media, routing
from handlers.channels import adapter_for
from handlers.channels.base import WebhookError, describe
from handlers.ingest import ingest
from handlers.outbound import statuses
from observability import metrics
from schemas import changes as c
from schemas.inbound import DeliveryUpdate, InboundMessage, IngestOutcome, MessageEdit, Normalized
from settings import Settings, get_settings
from store import bulk
from store.blobs import BlobWriteError, blob_store
from store.db import reading, transaction
from store.models import Account, Conversation, Delivery, DeliveryOutcome, Inbox, Ticket

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
BULK_TASK = "inboxsync.bulk_chunk"

Counts = dict[str, int]


def normalize(d: dict[str, Any]) -> list[Normalized]:
    try:
        inbox_id, provider = int(d["inbox_id"]), str(d["provider"])
        received_at = datetime.fromisoformat(d["received_at"])
        payload = journal.unwrapped(d["payload"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WebhookError(f"malformed delivery: {exc!r}") from None
    try:
        return list(adapter_for(provider).normalize(inbox_id, received_at, payload))
    except ValidationError as exc:
        # describe(): the fields and their problems, not the values (a customer's text).
        raise WebhookError(describe(exc)) from None


def ingest_deliveries(deliveries: list[dict[str, Any]], task_id: str | None) -> Counts:
    """Journal and store deliveries at once (what ingress + worker do, in one call)."""
    return process_deliveries([i for i in journal.journal(deliveries) if i is not None], task_id)


def process_deliveries(ids: list[int], task_id: str | None) -> Counts:
    """Store the journaled deliveries ``ids``; returns counts (stored, duplicate, dead, gone).

    One transaction for the batch: the messages, the dead letters of deliveries that cannot be
    normalized, the outcomes and the deletion of the journal rows commit together, so each
    delivery is processed once however often its id is delivered. If the batch fails for a
    reason that is not transient, each delivery is tried alone and the one that fails goes to
    the dead letters."""
    try:
        return _process(ids, task_id)
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


def _claim(session: Session, ids: list[int]) -> list[Row[Any]]:
    """Lock the journal rows ``ids`` that are still there. SKIP LOCKED: a row another worker is
    storing (a copy of this message from the sweeper) is that worker's.

    Only these: a worker that also took other pending rows left their own broker messages to
    find nothing, each costing a task and a transaction after the work was done. Ingest
    messages queued up are taken from the broker instead (workers/coalesce.py)."""
    return list(
        session.execute(
            select(Delivery.id, Delivery.inbox_id, Delivery.received_at)
            .where(bulk.among(session, Delivery.id, ids))
            .order_by(Delivery.id)
            .with_for_update(skip_locked=True)
        )
    )


def _read(ids: list[int]) -> list[Row[Any]]:
    """The journal rows ``ids`` still there, read without a lock (to prepare them)."""
    with reading() as session:
        return list(
            session.execute(
                select(*_JOURNAL_COLUMNS)
                .where(bulk.among(session, Delivery.id, ids))
                .order_by(Delivery.id)
            )
        )


Prepared = tuple[dict[str, Any], list[Normalized] | WebhookError]


def _prepare(ids: list[int]) -> dict[int, Prepared]:
    """Each delivery normalized (its messages, or why it cannot be), and its attachments' bytes
    on disk: the slow part (parsing, one fsync per blob), done before the transaction opens so
    that it never holds the locks of the batch (a mail with thousands of attachments used to
    keep a transaction and its locks open for a minute). A delivery another worker stores
    meanwhile was prepared for nothing: blobs are content-addressed, writing one twice is
    harmless."""
    prepared: dict[int, Prepared] = {}
    rows = _read(ids)
    secrets = _secrets_for_media(rows)
    for row in rows:
        d = _as_delivery(row)
        try:
            found = normalize(d)
        except WebhookError as exc:
            prepared[row.id] = (d, exc)
            continue
        adapter = adapter_for(row.provider)
        prepared[row.id] = (
            d,
            [
                media.fetch(m, row.provider, adapter, secrets.get(row.inbox_id, {}))
                if isinstance(m, InboundMessage) and m.media
                else m
                for m in found
            ],
        )
    blob_store().put_all(
        blob
        for _, found in prepared.values()
        if isinstance(found, list)
        for m in found
        if isinstance(m, InboundMessage)
        for blob in m.blobs
    )
    return prepared


def _secrets_for_media(rows: list[Row[Any]]) -> dict[int, dict[str, Any]]:
    """The inbox secrets chat adapters fetch media with (bot tokens, account keys)."""
    inbox_ids = {r.inbox_id for r in rows if r.provider not in _NO_MEDIA}
    if not inbox_ids:
        return {}
    with reading() as session:
        found = session.execute(select(Inbox.id, Inbox.secrets).where(Inbox.id.in_(inbox_ids)))
        return {r.id: dict(r.secrets or {}) for r in found}


# Providers whose messages never carry media by reference (mail brings its attachments along).
_NO_MEDIA = frozenset({"generic", "postmark", "mailgun", "sendgrid", "ses", "rfc822"})


def _as_delivery(row: Row[Any]) -> dict[str, Any]:
    return {
        "inbox_id": row.inbox_id,
        "provider": row.provider,
        "received_at": row.received_at.isoformat(),
        "payload": row.payload,
    }


def _process(ids: list[int], task_id: str | None) -> Counts:
    prepared = _prepare(ids)  # attachment bytes first: once messages commit, blobs are on disk
    with transaction() as session:
        rows = [r for r in _claim(session, ids) if r.id in prepared]
        messages: list[InboundMessage] = []
        changes: list[MessageEdit] = []
        updates: list[DeliveryUpdate] = []
        owner: list[int] = []  # the delivery each message or edit came from
        dead: dict[int, tuple[dict[str, Any], BaseException]] = {}
        for row in rows:
            d, found = prepared[row.id]
            if isinstance(found, WebhookError):
                dead[row.id] = (d, found)
                continue
            messages += [m for m in found if isinstance(m, InboundMessage)]
            owner += [row.id] * sum(1 for m in found if isinstance(m, InboundMessage))
        for row in rows:  # edits after messages: an edit of a message of this batch finds it
            found = prepared[row.id][1]
            if not isinstance(found, WebhookError):
                changes += [e for e in found if isinstance(e, MessageEdit)]
                owner += [row.id] * sum(1 for e in found if isinstance(e, MessageEdit))
                updates += [u for u in found if isinstance(u, DeliveryUpdate)]
        outcomes = ingest(session, messages) if messages else []
        edits.apply_waiting(session, {(o.inbox_id, o.external_id) for o in outcomes})
        edited = edits.apply(session, changes) if changes else []
        statuses.record(session, updates)
        deadletters.insert(session, INGEST_TASK, task_id, list(dead.values()))
        _record_outcomes(session, rows, owner, [*outcomes, *edited], dead)
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


def _record_outcomes(
    session: Session,
    rows: list[Row[Any]],
    owner: list[int],
    outcomes: list[IngestOutcome | edits.EditOutcome],
    dead: dict[int, tuple[dict[str, Any], BaseException]],
) -> None:
    """What became of each delivery, for ``GET /deliveries/{id}``."""
    per_delivery: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for delivery_id, o in zip(owner, outcomes, strict=True):
        per_delivery[delivery_id].append(
            {
                "message_id": o.message_id,
                "conversation_id": o.conversation_id,
                "duplicate": o.duplicate,
            }
        )
    now = datetime.now(UTC)
    records = []
    for row in rows:
        found = per_delivery.get(row.id, [])
        if row.id in dead:
            state, error = "dead", str(dead[row.id][1])[:2000].replace("\x00", "\ufffd")
        else:
            duplicate = bool(found) and all(m["duplicate"] for m in found)
            state, error = ("duplicate" if duplicate else "stored"), None
        records.append(
            {
                "id": row.id,
                "inbox_id": row.inbox_id,
                "state": state,
                "messages": found,
                "error": error,
                "received_at": row.received_at,
                "processed_at": now,
            }
        )
    bulk.insert_many(session, DeliveryOutcome, records)
    if metrics.enabled():
        for record in records:
            metrics.DELIVERIES.labels(record["state"]).inc()
            if record["state"] != "dead":
                metrics.COMMIT_LATENCY.observe(metrics.since(record["received_at"]))


def _bury(ids: list[int], task_id: str | None) -> Counts:
    """Dead-letter deliveries that fail on their own, with the error, and drop their rows."""
    try:
        _process(ids, task_id)
    except TRANSIENT_DB_ERRORS:
        raise
    except Exception as exc:
        error = exc
    else:
        return {"stored": 0, "duplicate": 0, "dead": 0, "gone": len(ids)}
    payloads = {r.id: _as_delivery(r) for r in _read(ids)}
    with transaction() as session:
        rows = [r for r in _claim(session, ids) if r.id in payloads]
        dead: dict[int, tuple[dict[str, Any], BaseException]] = {
            r.id: (payloads[r.id], error) for r in rows
        }
        deadletters.insert(session, INGEST_TASK, task_id, list(dead.values()))
        _record_outcomes(session, rows, [], [], dead)
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
            location = routing.ticket_location(
                row.tier,
                row.created_at,
                cutoff=settings.helpdesk_cutoff,
                helpdesk_tiers=settings.helpdesk_tiers,
            )
    else:
        location = session.scalar(select(Conversation.location).where(Conversation.id == conv_id))
    return routing.queue_for(location or "inbox")
