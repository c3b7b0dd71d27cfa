"""``GET /tickets/{id}/history`` and ``GET /conversations/{id}/history``: why a case is as it
is (handlers/history.py builds the answer; here only who may see it)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy.orm import Session

from api import errors
from api.auth import Caller
from handlers import history
from schemas.api import HistoryOut
from schemas.types import Id
from store import cases
from store.db import reading

router = APIRouter()


@router.get(
    "/tickets/{ticket_id}/history",
    response_model=HistoryOut,
    responses=errors.responses(404),
    tags=["tickets"],
)
def ticket_history(ticket_id: Id, who: Caller) -> Any:
    with reading() as session:
        return _answer(session, who, "ticket", ticket_id, ticket_ids=[ticket_id])


@router.get(
    "/conversations/{conversation_id}/history",
    response_model=HistoryOut,
    responses=errors.responses(404),
    tags=["conversations"],
)
def conversation_history(conversation_id: Id, who: Caller) -> Any:
    with reading() as session:
        ids = {"conversation_ids": [conversation_id]}
        return _answer(session, who, "conversation", conversation_id, **ids)


def _answer(
    session: Session, who: Caller, entity: str, entity_id: int, **ids: list[int]
) -> HistoryOut:
    try:
        loaded = history.load(session, **ids)
    except cases.NotFound:
        raise errors.not_found(entity, entity_id) from None
    who.require(entity, entity_id, loaded.account_ids.get((entity, entity_id)))
    return history.of_case(session, loaded, entity, entity_id)
