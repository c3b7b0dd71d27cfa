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

from api.auth import Principal
from api.errors import JSON, ApiError, not_found
from api.views import account_of, conversation_out, ticket_out
from handlers import pipeline
from handlers.apply import request_digest
from schemas import changes as c
from schemas.api import ChangeOut
from settings import get_settings
from store.db import reading
from store.models import Change, Conversation, DeadLetter, Ticket


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


def _lookup(change_id: str) -> tuple[Change | None, DeadLetter | None]:
    with reading() as session:
        change = session.get(Change, change_id)
        dead = None
        if change is None:
            dead = session.scalar(select(DeadLetter).where(DeadLetter.key == change_id).limit(1))
        return change, dead


def _publish(envelope: dict[str, Any], queue: str) -> None:
    from workers.app import app

    app.send_task(
        pipeline.APPLY_TASK,
        args=[envelope],
        queue=queue,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2},
    )


async def submit(
    request: Request,
    who: Principal,
    action: c.Action,
    *,
    idempotency_key: str | None,
    given_id: str | None = None,
    occurred_at: datetime | None = None,
) -> JSON:
    account_id, queue = await run_in_threadpool(_prepare, who, action)
    change_id = change_id_for(account_id, idempotency_key, given_id)
    digest = request_digest(action)
    change, dead = await run_in_threadpool(_lookup, change_id)
    if change is None and dead is None:
        envelope = c.ChangeEnvelope(
            id=change_id,
            account_id=account_id,
            occurred_at=occurred_at or datetime.now(UTC),
            action=action,
            request_sha256=digest,
        ).model_dump(mode="json")
        await run_in_threadpool(_publish, envelope, queue)
        change, dead = await _wait(change_id, get_settings().api_wait_timeout_s)
    elif change is not None and change.request_sha256 and change.request_sha256 != digest:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"change {change_id!r} was already made with a different request",
        )
    return await run_in_threadpool(_answer, change_id, change, dead)


async def _wait(change_id: str, timeout: float) -> tuple[Change | None, DeadLetter | None]:
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        change, dead = await run_in_threadpool(_lookup, change_id)
        if change is not None or dead is not None or time.monotonic() >= deadline:
            return change, dead
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)


def _answer(change_id: str, change: Change | None, dead: DeadLetter | None) -> JSON:
    if dead is not None:
        out = ChangeOut(change_id=change_id, status="failed", error=dead.error)
        return JSON(out.model_dump(mode="json"), status_code=422)
    if change is None:
        out = ChangeOut(change_id=change_id, status="pending")
        return JSON(
            out.model_dump(mode="json"),
            status_code=202,
            headers={"Location": f"/changes/{change_id}"},
        )
    return JSON(*render(change))


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
    )
    with reading() as session:
        if result.conversation_id is not None:
            conv = session.get(Conversation, result.conversation_id)
            out.conversation = None if conv is None else conversation_out(session, conv)
        if result.ticket_id is not None:
            ticket = session.get(Ticket, result.ticket_id)
            out.ticket = None if ticket is None else ticket_out(session, ticket)
    status = 200
    if result.outcome == "rejected":
        rule, _, code = (result.code or "-:409").partition(":")
        out.rule = None if rule == "-" else rule
        status = int(code or 409)
    elif change.kind == "create_ticket":
        status = 201
    return out.model_dump(mode="json"), status
