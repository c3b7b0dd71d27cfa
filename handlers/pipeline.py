"""From a broker message to the store: what the thin Celery tasks in workers/tasks.py call.

A delivery is one accepted webhook payload as the ingress enqueued it::

    {"inbox_id": 7, "provider": "generic", "received_at": "2026-…Z", "payload": {...}}

A batch of deliveries is normalized, then stored in one transaction. A delivery that cannot be
normalized, or that makes its batch fail for a reason other than a transient one, ends in a
dead-letter record; the rest of the batch is stored. Transient errors (the database went away,
a lock timed out) propagate, so that Celery retries the whole task: what was committed before
is deduplicated on the second run.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from handlers import apply, routing
from handlers.channels import adapter_for
from handlers.channels.base import WebhookError
from handlers.ingest import ingest
from schemas import changes as c
from schemas.inbound import InboundMessage
from settings import Settings, get_settings
from store.db import is_postgres, transaction
from store.models import Account, Conversation, DeadLetter, Ticket

# Worth retrying: the database or a lock, not the payload. IntegrityError is here because two
# workers racing on one new row make one of them fail once; the retry finds the row.
TRANSIENT_DB_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
    sa_exc.IntegrityError,
)

INGEST_TASK = "inboxsync.ingest_batch"
APPLY_TASK = "inboxsync.apply_change"


def delivery(inbox_id: int, provider: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The broker form of one accepted webhook payload."""
    return {
        "inbox_id": inbox_id,
        "provider": provider,
        "received_at": datetime.now(UTC).isoformat(),
        "payload": payload,
    }


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
    """Store a batch of deliveries; returns counts (stored, duplicate, dead)."""
    groups: list[tuple[dict[str, Any], list[InboundMessage]]] = []
    dead: list[tuple[dict[str, Any], Exception]] = []
    for d in deliveries:
        try:
            groups.append((d, normalize(d)))
        except WebhookError as exc:
            dead.append((d, exc))
    try:
        counts = _ingest_groups(groups, dead, task_id)
    except TRANSIENT_DB_ERRORS:
        raise
    except Exception:
        if len(groups) <= 1:
            raise
        # One bad delivery must not hold back the others: isolate it.
        counts = {"stored": 0, "duplicate": 0, "dead": len(dead)}
        record_dead_letters(INGEST_TASK, task_id, dead)
        for group in groups:
            try:
                part = _ingest_groups([group], [], task_id)
            except TRANSIENT_DB_ERRORS:
                raise
            except Exception as exc:
                record_dead_letters(INGEST_TASK, task_id, [(group[0], exc)])
                counts["dead"] += 1
                continue
            counts["stored"] += part["stored"]
            counts["duplicate"] += part["duplicate"]
    return counts


def _ingest_groups(
    groups: list[tuple[dict[str, Any], list[InboundMessage]]],
    dead: list[tuple[dict[str, Any], Exception]],
    task_id: str | None,
) -> dict[str, int]:
    messages = [m for _, msgs in groups for m in msgs]
    with transaction() as session:
        outcomes = ingest(session, messages) if messages else []
        _insert_dead_letters(session, INGEST_TASK, task_id, dead)
    duplicates = sum(1 for o in outcomes if o.duplicate)
    return {"stored": len(outcomes) - duplicates, "duplicate": duplicates, "dead": len(dead)}


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
