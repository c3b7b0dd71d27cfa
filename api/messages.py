"""Messages: one by its id, or found by the ids the outside world knows it by."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import or_, select

from api import errors, views
from api.auth import Caller
from api.errors import ApiError, not_found
from handlers.threading import ref_key
from schemas.api import MessageOut
from schemas.types import Id
from store.db import reading
from store.models import Inbox, Message

router = APIRouter(tags=["messages"])


@router.get("/messages/{message_id}", response_model=MessageOut, responses=errors.responses(404))
def get_message(message_id: Id, who: Caller) -> Any:
    with reading() as session:
        found = views.messages(session, [Message.id == message_id])
        if found:
            account = session.scalar(select(Inbox.account_id).where(Inbox.id == found[0].inbox_id))
            who.require("message", message_id, account)
            return found[0]
    raise not_found("message", message_id)


@router.get("/messages", response_model=list[MessageOut])
def find_messages(
    who: Caller,
    message_id: Annotated[
        str | None, Query(max_length=500, description="An RFC 5322 Message-ID, without <>")
    ] = None,
    provider_id: Annotated[
        str | None, Query(max_length=500, description="The provider's id of the message")
    ] = None,
    external_id: Annotated[str | None, Query(max_length=500)] = None,
    inbox_id: Id | None = None,
) -> Any:
    """Messages with this Message-ID, provider id or external id, in the caller's inboxes (the
    same mail may be in several: each inbox keeps its own copy)."""
    where = []
    if message_id is not None:
        where.append(Message.external_id == ref_key(message_id.strip().strip("<>")))
    if provider_id is not None:
        # A message without a provider id of its own is known by its external id.
        where.append(or_(Message.provider_id == provider_id, Message.external_id == provider_id))
    if external_id is not None:
        where.append(Message.external_id == external_id)
    if not where:
        raise ApiError(
            422, "invalid_request", "give message_id, provider_id or external_id to look for"
        )
    inboxes = select(Inbox.id)
    if not who.is_admin:
        inboxes = inboxes.where(Inbox.account_id == who.account_id)
    if inbox_id is not None:
        inboxes = inboxes.where(Inbox.id == inbox_id)
    with reading() as session:
        return views.messages(session, [*where, Message.inbox_id.in_(inboxes)], limit=100)
