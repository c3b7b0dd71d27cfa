"""Every write on conversations and tickets is a change applied by a worker.

The route checks tenancy, gives the change its identity (the ``Idempotency-Key``, scoped to the
account, or a fresh one), enqueues ``inboxsync.apply_change`` on the queue R1/R2 route it to,
and waits up to ``api_wait_timeout_s`` for the worker's result in the ``changes`` table. A retry
with the same key finds the recorded change and returns its first result without enqueuing; a
retry that arrives while the first is still queued is deduplicated by the worker.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api import views
from api.auth import Principal
from api.errors import JSON, ApiError, not_found
from api.views import account_of
from handlers import journal, pipeline
from handlers.apply import request_digest
from schemas import changes as c
from schemas.api import ChangeOut
from settings import get_settings
from store.db import reading
from store.models import Change, Conversation, DeadLetter, PendingChange, Ticket
from workers import publish as workers_publish


def change_id_for(account_id: int, key: str | None, given: str | None) -> str:
    if given:
        return f"ext:{account_id}:{given}"
    if key:
        return f"api:{account_id}:{key}"
    return f"api:{account_id}:{uuid.uuid4()}"


def _prepare(who: Principal, action: c.Action) -> tuple[int, str]:
    """The change's account (404 if the caller may not see a target) and its queue."""
    targets = []
    if (conv_id := getattr(action, "conversation_id", None)) is not None:
        targets.append(("conversation", conv_id))
    if (ticket_id := getattr(action, "ticket_id", None)) is not None:
        targets.append(("ticket", ticket_id))
    with reading() as session:
        accounts = {who.require(e, i, account_of(session, e, i)) for e, i in targets}
        if len(accounts) != 1:
            entity, entity_id = targets[-1]
            raise not_found(entity, entity_id)
        return accounts.pop(), pipeline.queue_for_action(session, action, get_settings())


Found = tuple[Change | None, DeadLetter | None, PendingChange | None]


def _lookup(change_id: str) -> Found:
    # The pending entry is read before the change: a worker deletes one and writes the other in
    # one commit, so a change not pending at the first read is recorded by the second. Read the
    # other way round, a commit between the reads showed neither, and the change was pended and
    # published again, to stay pending for ever.
    with reading() as session:
        pending = session.get(PendingChange, change_id)
        change = session.get(Change, change_id)
        if change is not None:
            return change, None, None
        dead = session.scalar(select(DeadLetter).where(DeadLetter.key == change_id).limit(1))
        return None, dead, None if dead else pending


def publish(envelope: dict[str, Any], queue: str) -> None:
    workers_publish.change(envelope, queue)


def placed_at(given: datetime | None, arrival: datetime) -> tuple[datetime, list[str]]:
    """When a change happened: when the API got it, or the caller's earlier ``occurred_at``.
    A time in the future of its arrival is clamped to the arrival, and the answer says so: no
    clock of a caller's may place a change after things that happened after it."""
    if given is None:
        return arrival, []
    if given <= arrival:
        return given, []
    note = (
        f"occurred_at {given.isoformat()} is later than the change's arrival; "
        f"placed at its arrival, {arrival.isoformat()}"
    )
    return arrival, [note]


async def submit(
    request: Request,
    who: Principal,
    action: c.Action,
    *,
    idempotency_key: str | None,
    given_id: str | None = None,
    occurred_at: datetime | None = None,
) -> JSON:
    arrival = datetime.now(UTC)
    account_id, queue = await run_in_threadpool(_prepare, who, action)
    change_id = change_id_for(account_id, idempotency_key, given_id)
    digest = request_digest(action)
    found = await run_in_threadpool(_lookup, change_id)
    change, dead, pending = found
    prior_digest = (change.request_sha256 if change else None) or (
        pending.envelope.get("request_sha256") if pending else None
    )
    if prior_digest and prior_digest != digest:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"change {change_id!r} was already made with a different request",
        )
    if change is None and dead is None:
        if pending is None:
            when, notes = placed_at(occurred_at, arrival)
            envelope = c.ChangeEnvelope(
                id=change_id,
                account_id=account_id,
                occurred_at=when,
                action=action,
                request_sha256=digest,
                notes=notes,
                cause=who.cause,
            ).model_dump(mode="json")
            # Journaled first: a lost broker message is published again by the sweeper, and a
            # retry that finds it pending publishes nothing more.
            if await run_in_threadpool(journal.pend, change_id, account_id, queue, envelope):
                await run_in_threadpool(publish, envelope, queue)
        found = await _wait(change_id, request.app.state.settings.api_wait_timeout_s)
    return await run_in_threadpool(_answer, change_id, *found)


def read(change_id: str, who: Principal) -> JSON:
    """``GET /changes/{id}``: the result; ``pending`` while it is queued; never 404 for a change
    the API accepted."""
    change, dead, pending = _lookup(change_id)
    account = None
    if change is not None:
        account = change.account_id
    elif pending is not None:
        account = pending.account_id
    elif dead is not None:
        args = (dead.payload or {}).get("args") or [{}]
        account = args[0].get("account_id") if isinstance(args[0], dict) else None
    if account is None or not who.sees(account):
        raise not_found("change", change_id)
    return _answer(change_id, change, dead, pending)


async def _wait(change_id: str, timeout: float) -> Found:
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        found = await run_in_threadpool(_lookup, change_id)
        if found[0] is not None or found[1] is not None or time.monotonic() >= deadline:
            return found
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)


def _answer(
    change_id: str,
    change: Change | None,
    dead: DeadLetter | None,
    pending: PendingChange | None = None,
) -> JSON:
    if change is not None:
        return JSON(*render(change))
    if dead is not None:
        reason = dead.error or "the change could not be applied"
        out = ChangeOut(change_id=change_id, status="failed", error="failed", message=reason)
        return JSON(out.model_dump(mode="json"), status_code=422)
    if pending is None:
        raise not_found("change", change_id)
    out = ChangeOut(
        change_id=change_id,
        status="pending",
        occurred_at=pending.envelope.get("occurred_at"),
        notes=pending.envelope.get("notes") or [],
    )
    return JSON(
        out.model_dump(mode="json"),
        status_code=202,
        headers={"Location": f"/changes/{change_id}"},
    )


def render(change: Change) -> tuple[dict[str, Any], int]:
    """The body and status of a recorded change, as its first answer said."""
    result = c.ChangeResult.model_validate(change.result)
    out = ChangeOut(
        change_id=change.id,
        status=result.outcome,
        duplicate=result.duplicate,
        replayed=result.replayed,
        error=result.error,
        effects=result.effects,
        superseded=result.superseded,
        occurred_at=change.occurred_at,
        notes=result.notes,
    )
    with reading() as session:
        if result.conversation_id is not None:
            convs = views.conversations(session, [Conversation.id == result.conversation_id])
            out.conversation = convs[0] if convs else None
        if result.ticket_id is not None:
            found = views.tickets(session, [Ticket.id == result.ticket_id])
            out.ticket = found[0] if found else None
    status = 200
    if result.outcome == "rejected":
        rule, _, code = (result.code or "-:409").partition(":")
        out.rule = None if rule == "-" else rule
        status = int(code or 409)
        # An error as every other (api/errors.py): a code, and the rule's reason as the message.
        out.error = {404: "not_found", 422: "invalid_request"}.get(status, "rejected")
        out.message = result.error or "refused by a rule"
    elif change.kind == "create_ticket":
        status = 201
    return out.model_dump(mode="json"), status
