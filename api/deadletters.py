"""``/dead-letters``: what workers could not process, seen, replayed and discarded
(handlers/deadletter_replay.py). An account token sees the letters that name its account (an
ingest delivery's inbox, a change's account, a reply's); the admin sees all."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from api.auth import Caller
from api.errors import ApiError, not_found
from api.views import page
from handlers import deadletter_replay as letters
from schemas.api import Page
from schemas.ops import DeadLetterOut, IsoTime, LetterState, ReplayIn, ReplayOut
from schemas.types import Id
from store.models import DeadLetter
from workers import publish

router = APIRouter(tags=["dead letters"])
# A letter's id is digits: ``/dead-letters/replay`` is not a letter (its GET is a 405, not a 422).
LETTER = "/dead-letters/{letter_id:int}"
RESPONSES: dict[int | str, dict[str, Any]] = {404: {}, 409: {}, 422: {}}


def letter_out(letter: DeadLetter, *, payload: bool = False) -> dict[str, Any]:
    out = DeadLetterOut.model_validate(letter, from_attributes=True)
    out.payload = letter.payload if payload else None
    return out.model_dump(mode="json")


def replayed_out(done: letters.Replayed) -> dict[str, Any]:
    return ReplayOut(
        replayed=len(done.letters),
        ids=[letter.id for letter in done.letters],
        skipped=[{"id": i, "reason": why} for i, why in done.skipped],
        published=done.published,
    ).model_dump(mode="json")


@router.get("/dead-letters", response_model=Page[DeadLetterOut])
def list_dead_letters(
    who: Caller,
    task: Annotated[str | None, Query(max_length=200, description="e.g. apply_change")] = None,
    inbox_id: Id | None = None,
    reason: Annotated[str | None, Query(max_length=500, description="in the error")] = None,
    older_than: IsoTime | None = None,
    newer_than: IsoTime | None = None,
    state: LetterState | None = None,
    after_id: Id = 0,
    limit: int = Query(default=50, ge=1, le=500),
) -> Any:
    """Dead letters by id, after ``after_id`` (pass the last id of a page to get the next);
    without their payloads (``GET /dead-letters/{id}`` shows one whole)."""
    where = letters.Filter(task, inbox_id, reason, older_than, newer_than, state)
    found = letters.find(where, account_id=who.account_id, after_id=after_id, limit=limit + 1)
    return page([letter_out(letter) for letter in found], limit)


@router.get(LETTER, response_model=DeadLetterOut, responses={404: {}})
def get_dead_letter(letter_id: Id, who: Caller) -> Any:
    try:
        return letter_out(letters.get(letter_id, account_id=who.account_id), payload=True)
    except letters.NotFound:
        raise not_found("dead letter", letter_id) from None


@router.post("/dead-letters/replay", response_model=ReplayOut, responses={422: {}})
async def replay_matching(body: ReplayIn, who: Caller) -> Any:
    """Replay every letter that matches (``waiting`` ones, or ``replayed`` ones again; never a
    discarded one) through the normal, idempotent path; how many."""
    where = letters.Filter(
        body.task, body.inbox_id, body.reason, body.older_than, body.newer_than, body.state
    )
    done = await run_in_threadpool(
        lambda: letters.replay_matching(
            where, account_id=who.account_id, publisher=publish, limit=body.limit
        )
    )
    return replayed_out(done)


@router.post("/dead-letters/{letter_id}/replay", response_model=ReplayOut, responses=RESPONSES)
async def replay_one(letter_id: Id, who: Caller) -> Any:
    """Replay one letter (again, if it was replayed before: nothing changes twice). A discarded
    letter is not replayed (409)."""
    try:
        done = await run_in_threadpool(
            lambda: letters.replay(letter_id, account_id=who.account_id, publisher=publish)
        )
    except letters.NotFound:
        raise not_found("dead letter", letter_id) from None
    except letters.Refused as exc:
        raise ApiError(409, "not_replayable", str(exc)) from None
    return replayed_out(done)


@router.delete(LETTER, response_model=DeadLetterOut, responses={404: {}})
def discard(letter_id: Id, who: Caller) -> Any:
    """Discard a letter: kept, marked ``discarded``, never replayed."""
    try:
        return letter_out(letters.discard(letter_id, account_id=who.account_id))
    except letters.NotFound:
        raise not_found("dead letter", letter_id) from None
