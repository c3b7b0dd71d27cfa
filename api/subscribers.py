"""``/subscribers``: receivers of outbound events (handlers/subscribers.py), their delivery log
and replays. An account token sees its own subscribers (another's answers 404); the admin sees
all and names the account when it makes one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from api import errors
from api.auth import Caller
from api.views import page
from handlers import subscribers
from schemas.api import Page
from schemas.events import (
    AttemptOut,
    EventsReplayIn,
    EventsReplayOut,
    SubscriberIn,
    SubscriberOut,
    SubscriberPatch,
)
from schemas.types import Id

router = APIRouter(tags=["outbound events"])
ONE = "/subscribers/{subscriber_id}"


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json")


@router.post(
    "/subscribers", status_code=201, response_model=SubscriberOut, responses=errors.responses(404)
)
async def create_subscriber(body: SubscriberIn, who: Caller) -> Any:
    """Subscribe a URL to event types; the answer shows its signing secret (once). A URL that
    is not https, or whose host is loopback or private, is refused (422) unless the operator
    allows it (``INBOXSYNC_OUTBOUND_ALLOW_PRIVATE``)."""
    account_id = who.account_for_create(body.account_id)
    return _dump(await run_in_threadpool(subscribers.create, account_id, body))


@router.get("/subscribers", response_model=Page[SubscriberOut])
def list_subscribers(
    who: Caller, after_id: Id = 0, limit: int = Query(default=50, ge=1, le=500)
) -> Any:
    found = subscribers.listed(who.account_id, after_id=after_id, limit=limit + 1)
    return page([_dump(s) for s in found], limit)


@router.get(ONE, response_model=SubscriberOut, responses=errors.responses(404))
def get_subscriber(subscriber_id: Id, who: Caller) -> Any:
    return _dump(subscribers.get(subscriber_id, who.account_id))


@router.patch(ONE, response_model=SubscriberOut, responses=errors.responses(404))
async def update_subscriber(subscriber_id: Id, body: SubscriberPatch, who: Caller) -> Any:
    """Change its URL or types; ``enabled: true`` re-enables a disabled subscriber, which then
    resumes in order from the event it stopped at."""
    return _dump(await run_in_threadpool(subscribers.update, subscriber_id, body, who.account_id))


@router.delete(ONE, status_code=204, responses=errors.responses(404))
def delete_subscriber(subscriber_id: Id, who: Caller) -> Response:
    subscribers.remove(subscriber_id, who.account_id)
    return Response(status_code=204)


@router.post(f"{ONE}/rotate-secret", response_model=SubscriberOut, responses=errors.responses(404))
def rotate_secret(subscriber_id: Id, who: Caller) -> Any:
    """A new signing secret (shown once); the previous one also signs every event for
    ``INBOXSYNC_EVENTS_SECRET_OVERLAP_S``, so receivers can switch without losing one."""
    return _dump(subscribers.rotate_secret(subscriber_id, who.account_id))


@router.get(f"{ONE}/deliveries", response_model=Page[AttemptOut], responses=errors.responses(404))
def list_deliveries(
    subscriber_id: Id, who: Caller, after_id: Id = 0, limit: int = Query(default=50, ge=1, le=500)
) -> Any:
    """The delivery log: every attempt, oldest first (its answer's status code or its error)."""
    found = subscribers.attempts(subscriber_id, who.account_id, after_id=after_id, limit=limit + 1)
    return page([_dump(a) for a in found], limit)


@router.post(f"{ONE}/replay", response_model=EventsReplayOut, responses=errors.responses(404))
def replay(subscriber_id: Id, body: EventsReplayIn, who: Caller) -> Any:
    """Send again one event (``event_id``) or those made in ``[from, to)``, after what is
    pending, with the same ``webhook-id`` as the first time."""
    return {"replayed": subscribers.replay(subscriber_id, body, who.account_id)}
