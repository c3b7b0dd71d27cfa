"""Contacts: who writes in, per account. Their conversations: ``GET /conversations?contact_id=``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from api import errors
from api.auth import Caller
from api.errors import not_found
from api.views import page
from schemas.api import ContactOut, Page
from schemas.types import Id
from store.db import reading
from store.models import Contact, Conversation

router = APIRouter(tags=["contacts"])

_CONVERSATIONS = (
    select(func.count(Conversation.id))
    .where(Conversation.contact_id == Contact.id, Conversation.removed_by.is_(None))
    .correlate(Contact)
    .scalar_subquery()
)


def _contacts(where: list[Any], limit: int) -> list[ContactOut]:
    with reading() as session:
        rows = session.execute(
            select(Contact, _CONVERSATIONS.label("n"))
            .where(*where)
            .order_by(Contact.id)
            .limit(limit)
        )
        return [
            ContactOut(
                id=r.Contact.id,
                account_id=r.Contact.account_id,
                handle=r.Contact.handle,
                conversation_count=r.n,
            )
            for r in rows
        ]


@router.get("/contacts", response_model=Page[ContactOut])
def list_contacts(
    who: Caller,
    handle: Annotated[
        str | None, Query(max_length=320, description="An address or handle, any case")
    ] = None,
    after_id: Id = 0,
    limit: int = Query(default=50, ge=1, le=500),
) -> Any:
    where: list[Any] = [Contact.id > after_id]
    if not who.is_admin:
        where.append(Contact.account_id == who.account_id)
    if handle is not None:
        where.append(Contact.handle == handle.lower())
    return page(_contacts(where, limit + 1), limit)


@router.get("/contacts/{contact_id}", response_model=ContactOut, responses=errors.responses(404))
def get_contact(contact_id: Id, who: Caller) -> Any:
    found = _contacts([Contact.id == contact_id], 1)
    if not found or not who.sees(found[0].account_id):
        raise not_found("contact", contact_id)
    return found[0]
