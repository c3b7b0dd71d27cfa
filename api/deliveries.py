"""``GET /deliveries/{id}``: where an accepted webhook delivery went (the 202 names its ids)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from sqlalchemy import select

from api import errors
from api.auth import Caller
from api.errors import not_found
from schemas.api import DeliveryOut
from schemas.types import Id
from store.db import reading
from store.models import Delivery, DeliveryOutcome, Inbox

router = APIRouter(tags=["webhooks"])


@router.get(
    "/deliveries/{delivery_id}", response_model=DeliveryOut, responses=errors.responses(404)
)
def get_delivery(delivery_id: Id, who: Caller) -> Any:
    with reading() as session:
        # The journal row is read first: a worker deletes it and writes the outcome in one
        # commit, so a row gone at the first read has its outcome at the second. The other way
        # round, a commit between the two reads showed neither: a 404 for an accepted delivery.
        journaled = session.get(Delivery, delivery_id)
        done = session.get(DeliveryOutcome, delivery_id)
        waiting = None if done is not None else journaled
        inbox_id = done.inbox_id if done else (waiting.inbox_id if waiting else None)
        account = session.scalar(select(Inbox.account_id).where(Inbox.id == inbox_id))
        if inbox_id is None or account is None or not who.sees(account):
            raise not_found("delivery", delivery_id)
        if done is not None:
            return DeliveryOut(
                id=done.id,
                inbox_id=done.inbox_id,
                state=done.state,  # type: ignore[arg-type]
                received_at=done.received_at,
                processed_at=done.processed_at,
                messages=done.messages,
                error=done.error,
            )
        assert waiting is not None
        return DeliveryOut(
            id=waiting.id,
            inbox_id=waiting.inbox_id,
            state="journaled",
            received_at=waiting.received_at,
        )
