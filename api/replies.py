"""Agents' replies: queue one on a conversation, follow its delivery, resend a failed one.

The route only queues (handlers/outbound/replies.py does the work) and answers 202 with the
reply's state and a ``Location`` to poll; ``Idempotency-Key`` makes a retried request return the
first reply instead of sending a second mail.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import errors
from api.auth import Caller
from api.errors import JSON, not_found
from api.views import account_of, reply_out
from handlers.outbound import replies
from schemas.outbound import ReplyIn, ReplyOut
from schemas.types import Id
from store.db import reading
from store.models import ProviderStatus, Reply

log = logging.getLogger(__name__)
router = APIRouter(tags=["replies"])
IdempotencyKey = Annotated[
    str | None,
    Header(max_length=120, description="Retries with the same key return the first reply."),
]


def _publish(reply_id: int) -> None:
    from workers import publish

    try:
        publish.reply(reply_id)
    except Exception:  # the reply is stored; the sweeper enqueues it (replies.sweep)
        log.warning("could not enqueue reply %s now; the sweeper will", reply_id, exc_info=True)


def _answer(reply_id: int, status: int) -> JSON:
    with reading() as session:
        reply = session.get(Reply, reply_id)
        assert reply is not None
        body = reply_out(reply, _statuses(session, [reply])).model_dump(mode="json")
    return JSON(body, status_code=status, headers={"Location": f"/replies/{reply_id}"})


@router.post(
    "/conversations/{conversation_id}/replies",
    status_code=202,
    response_model=ReplyOut,
    responses=errors.responses(404, 409, 503),
    summary="Reply to the customer by mail (queued; sent once)",
)
def create_reply(
    conversation_id: Id, body: ReplyIn, who: Caller, idempotency_key: IdempotencyKey = None
) -> JSON:
    with reading() as session:
        account = who.require(
            "conversation", conversation_id, account_of(session, "conversation", conversation_id)
        )
    key = f"api:{account}:{idempotency_key}" if idempotency_key else None
    reply_id, created = replies.queue_reply(
        account_id=account, conversation_id=conversation_id, body=body, key=key
    )
    if created:
        _publish(reply_id)
    return _answer(reply_id, 202)


@router.get("/replies/{reply_id}", response_model=ReplyOut, responses=errors.responses(404))
def get_reply(reply_id: Id, who: Caller) -> Any:
    with reading() as session:
        reply = session.get(Reply, reply_id)
        if reply is None or not who.sees(reply.account_id):
            raise not_found("reply", reply_id)
        return reply_out(reply, _statuses(session, [reply]))


@router.get(
    "/conversations/{conversation_id}/replies",
    response_model=list[ReplyOut],
    responses=errors.responses(404),
)
def list_replies(conversation_id: Id, who: Caller) -> Any:
    with reading() as session:
        who.require(
            "conversation", conversation_id, account_of(session, "conversation", conversation_id)
        )
        rows = session.scalars(
            select(Reply).where(Reply.conversation_id == conversation_id).order_by(Reply.id)
        ).all()
        known = _statuses(session, rows)
        return [reply_out(r, known) for r in rows]


def _statuses(session: Session, rows: Sequence[Reply]) -> dict[tuple[int, str], str]:
    """What chat providers said about these replies (delivered, read, failed), in one query."""
    ids = [r.provider_message_id for r in rows if r.provider_message_id]
    if not ids:
        return {}
    found = session.execute(
        select(
            ProviderStatus.inbox_id, ProviderStatus.provider_message_id, ProviderStatus.state
        ).where(ProviderStatus.provider_message_id.in_(ids))
    )
    return {(r.inbox_id, r.provider_message_id): r.state for r in found}


@router.post(
    "/replies/{reply_id}/resend",
    status_code=202,
    response_model=ReplyOut,
    responses=errors.responses(404, 409, 503),
    summary="Queue a failed reply again, same mail and Message-ID",
)
def resend_reply(reply_id: Id, who: Caller) -> JSON:
    replies.resend(reply_id, account_id=who.account_id)  # None: the admin sees every reply
    _publish(reply_id)
    return _answer(reply_id, 202)
