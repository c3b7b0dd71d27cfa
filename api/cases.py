"""Conversations and tickets: reads, and the actions agents take on them.

Every action is a change (schemas/changes.py) applied by a worker; see api/changes.py for how a
write is identified, routed and answered.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request

from api import changes, errors, views
from api.auth import Caller
from api.errors import JSON, ApiError
from schemas import changes as c
from schemas.api import (
    AssociateIn,
    ChangeIn,
    ChangeOut,
    ConversationOut,
    ConversationStatus,
    ConversationStatusIn,
    CreateTicketIn,
    Location,
    OwnerChangeIn,
    Page,
    TicketOut,
    TicketStatus,
    TicketStatusIn,
)
from schemas.types import Id
from store.db import reading
from store.models import Conversation, Ticket

router = APIRouter()
IdempotencyKey = Annotated[
    str | None,
    Header(max_length=120, description="Retries with the same key return the first result."),
]
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Queued; not applied within the wait. Poll the Location."},
    404: {},
    409: {"description": "Refused by a rule (the body names it)."},
    422: {},
    503: {},
}


# ---- reads -------------------------------------------------------------------------------------


Trashed = Literal["false", "true", "any"]


@router.get("/conversations", response_model=Page[ConversationOut], tags=["conversations"])
def list_conversations(
    who: Caller,
    status: ConversationStatus | None = None,
    owner_id: Id | None = None,
    location: Location | None = None,
    inbox_id: Id | None = None,
    contact_id: Id | None = None,
    trashed: Annotated[
        Trashed, Query(description="false (default): live ones; true: trashed; any: all")
    ] = "false",
    after_id: Id = 0,
    limit: int = Query(default=50, ge=1, le=500),
) -> Any:
    """Conversations by id, after ``after_id``: a page, with the ``next_after_id`` to ask for."""
    where = [Conversation.id > after_id]
    if not who.is_admin:
        where.append(Conversation.account_id == who.account_id)
    for column, value in (
        (Conversation.status, status),
        (Conversation.owner_id, owner_id),
        (Conversation.location, location),
        (Conversation.inbox_id, inbox_id),
        (Conversation.contact_id, contact_id),
    ):
        if value is not None:
            where.append(column == value)
    if trashed == "false":
        where.append(Conversation.removed_by.is_(None))
    elif trashed == "true":
        where += [Conversation.removed_by.is_not(None), Conversation.merged_into.is_(None)]
    with reading() as session:
        return views.page(views.conversations(session, where, limit=limit + 1), limit)


@router.get(
    "/conversations/{conversation_id}",
    response_model=ConversationOut,
    responses=errors.responses(404),
    tags=["conversations"],
)
def get_conversation(conversation_id: Id, who: Caller) -> Any:
    with reading() as session:
        conv = views.conversation(session, conversation_id)
        who.require("conversation", conversation_id, None if conv is None else conv.account_id)
        return conv


@router.get("/tickets", response_model=Page[TicketOut], tags=["tickets"])
def list_tickets(
    who: Caller,
    status: TicketStatus | None = None,
    owner_id: Id | None = None,
    location: Location | None = None,
    deleted: bool = False,
    after_id: Id = 0,
    limit: int = Query(default=50, ge=1, le=500),
) -> Any:
    where = [Ticket.id > after_id]
    if not who.is_admin:
        where.append(Ticket.account_id == who.account_id)
    for column, value in (
        (Ticket.status, status),
        (Ticket.owner_id, owner_id),
        (Ticket.location, location),
    ):
        if value is not None:
            where.append(column == value)
    where.append(Ticket.removed_by.is_not(None) if deleted else Ticket.removed_by.is_(None))
    with reading() as session:
        return views.page(views.tickets(session, where, limit=limit + 1), limit)


@router.get(
    "/tickets/{ticket_id}",
    response_model=TicketOut,
    responses=errors.responses(404),
    tags=["tickets"],
)
def get_ticket(ticket_id: Id, who: Caller) -> Any:
    with reading() as session:
        found = views.tickets(session, [Ticket.id == ticket_id])
        who.require("ticket", ticket_id, found[0].account_id if found else None)
        return found[0]


@router.get(
    "/changes/{change_id:path}",
    response_model=ChangeOut,
    # As the write answered: pending (202), refused by a rule (404, 409, 422).
    responses={**WRITE_RESPONSES, 202: {"model": ChangeOut, "description": "Pending."}},
    tags=["changes"],
)
def get_change(change_id: str, who: Caller) -> Any:
    return changes.read(change_id, who)


# ---- actions -----------------------------------------------------------------------------------


def _write(path: str, summary: str, tag: str) -> Any:
    return router.post(
        path, response_model=ChangeOut, responses=WRITE_RESPONSES, summary=summary, tags=[tag]
    )


@_write(
    "/conversations/{conversation_id}/ticket",
    "Create the conversation's ticket (T1, R1/R2)",
    "tickets",
)
async def create_ticket(
    conversation_id: Id,
    request: Request,
    who: Caller,
    idempotency_key: IdempotencyKey = None,
    body: CreateTicketIn | None = None,
) -> JSON:
    body = body or CreateTicketIn()
    action = c.CreateTicket(conversation_id=conversation_id, **body.model_dump())
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@_write("/tickets/{ticket_id}/conversations", "Associate another conversation (T3)", "tickets")
async def associate(
    ticket_id: Id,
    body: AssociateIn,
    request: Request,
    who: Caller,
    idempotency_key: IdempotencyKey = None,
) -> JSON:
    action = c.AssociateConversation(ticket_id=ticket_id, conversation_id=body.conversation_id)
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@router.delete(
    "/tickets/{ticket_id}/conversations/{conversation_id}",
    response_model=ChangeOut,
    responses=WRITE_RESPONSES,
    summary="Dissociate a conversation: always refused (T2)",
    tags=["tickets"],
)
async def dissociate(
    ticket_id: Id,
    conversation_id: Id,
    request: Request,
    who: Caller,
    idempotency_key: IdempotencyKey = None,
) -> JSON:
    action = c.DissociateConversation(ticket_id=ticket_id, conversation_id=conversation_id)
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@_write(
    "/conversations/{conversation_id}/owner", "Set the conversation's owner (O1)", "conversations"
)
async def set_conversation_owner(
    conversation_id: Id,
    body: OwnerChangeIn,
    request: Request,
    who: Caller,
    idempotency_key: IdempotencyKey = None,
) -> JSON:
    action = c.SetConversationOwner(conversation_id=conversation_id, owner_id=body.owner_id)
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@_write("/tickets/{ticket_id}/owner", "Set the ticket's owner (O2)", "tickets")
async def set_ticket_owner(
    ticket_id: Id,
    body: OwnerChangeIn,
    request: Request,
    who: Caller,
    idempotency_key: IdempotencyKey = None,
) -> JSON:
    action = c.SetTicketOwner(ticket_id=ticket_id, owner_id=body.owner_id)
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@_write(
    "/conversations/{conversation_id}/status", "Open or close a conversation (S3)", "conversations"
)
async def set_conversation_status(
    conversation_id: Id,
    body: ConversationStatusIn,
    request: Request,
    who: Caller,
    idempotency_key: IdempotencyKey = None,
) -> JSON:
    action = c.SetConversationStatus(conversation_id=conversation_id, status=body.status)
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@_write("/conversations/{conversation_id}/close", "Close a conversation (S3)", "conversations")
async def close_conversation(
    conversation_id: Id, request: Request, who: Caller, idempotency_key: IdempotencyKey = None
) -> JSON:
    action = c.SetConversationStatus(conversation_id=conversation_id, status="closed")
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@_write("/tickets/{ticket_id}/status", "Set the ticket's stage (S1, S2)", "tickets")
async def set_ticket_status(
    ticket_id: Id,
    body: TicketStatusIn,
    request: Request,
    who: Caller,
    idempotency_key: IdempotencyKey = None,
) -> JSON:
    action = c.SetTicketStatus(ticket_id=ticket_id, status=body.status)
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@_write("/conversations/{conversation_id}/trash", "Trash a conversation (D1, D2)", "conversations")
async def trash_conversation(
    conversation_id: Id, request: Request, who: Caller, idempotency_key: IdempotencyKey = None
) -> JSON:
    action = c.TrashConversation(conversation_id=conversation_id)
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@router.delete(
    "/tickets/{ticket_id}",
    response_model=ChangeOut,
    responses=WRITE_RESPONSES,
    summary="Delete a ticket (D2)",
    tags=["tickets"],
)
async def delete_ticket(
    ticket_id: Id, request: Request, who: Caller, idempotency_key: IdempotencyKey = None
) -> JSON:
    action = c.DeleteTicket(ticket_id=ticket_id)
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@_write(
    "/conversations/{conversation_id}/restore", "Restore what trashing removed", "conversations"
)
async def restore_conversation(
    conversation_id: Id, request: Request, who: Caller, idempotency_key: IdempotencyKey = None
) -> JSON:
    action = c.RestoreConversation(conversation_id=conversation_id)
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@_write("/tickets/{ticket_id}/restore", "Restore what deleting removed", "tickets")
async def restore_ticket(
    ticket_id: Id, request: Request, who: Caller, idempotency_key: IdempotencyKey = None
) -> JSON:
    action = c.RestoreTicket(ticket_id=ticket_id)
    return await changes.submit(request, who, action, idempotency_key=idempotency_key)


@_write("/changes", "Apply a change with its own id and time", "changes")
async def post_change(
    body: ChangeIn, request: Request, who: Caller, idempotency_key: IdempotencyKey = None
) -> JSON:
    if isinstance(body.action, c.MessageReceived):
        raise ApiError(422, "invalid_request", "messages arrive through webhooks, not /changes")
    if isinstance(body.action, c.CreateTicket) and (body.action.ticket_id or body.action.location):
        raise ApiError(422, "invalid_request", "ticket_id and location are chosen by inboxsync")
    return await changes.submit(
        request,
        who,
        body.action,
        idempotency_key=idempotency_key,
        given_id=body.id,
        occurred_at=body.occurred_at,
    )
