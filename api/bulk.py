"""``/bulk-jobs``: one action on many tickets or conversations, run by workers in chunks
(handlers/bulk.py). An account token makes and sees its account's jobs (another account's answer
404); the admin names the account and sees all."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from api import errors
from api.auth import Caller
from api.errors import JSON
from api.views import page
from handlers import bulk
from schemas.api import Page
from schemas.bulk import BulkJobIn, BulkJobOut
from schemas.types import Id
from settings import get_settings
from workers import publish

router = APIRouter(tags=["bulk jobs"])
JOB = "/bulk-jobs/{job_id}"
CONTROL = errors.responses(404, 409, 503)


@router.post(
    "/bulk-jobs",
    response_model=BulkJobOut,
    status_code=201,
    responses=errors.responses(404, 422, 503),
)
async def create_job(body: BulkJobIn, who: Caller) -> Any:
    """Make a job: its targets (``ids``, or a ``filter``) are frozen now, then run in chunks
    on the ``bulk`` queue. Follow it with ``GET /bulk-jobs/{id}``."""
    account_id = who.account_for_create(body.account_id)
    made = await run_in_threadpool(
        bulk.create, body, account_id, who.cause, get_settings(), publish.bulk_chunk
    )
    return JSON(made.model_dump(mode="json"), status_code=201)


@router.get("/bulk-jobs", response_model=Page[BulkJobOut])
def list_jobs(who: Caller, after_id: Id = 0, limit: int = Query(default=50, ge=1, le=500)) -> Any:
    """Jobs by id, after ``after_id``; counts and state, without the failed items' reasons."""
    found = bulk.find(who.account_id, after_id=after_id, limit=limit + 1)
    return page([j.model_dump(mode="json") for j in found], limit)


@router.get(JOB, response_model=BulkJobOut, responses=errors.responses(404))
def get_job(
    job_id: Id,
    who: Caller,
    failures_after_id: Id = 0,
    failures_limit: int = Query(default=100, ge=1, le=1000),
) -> Any:
    """A job's counts and state, and its failed items with their reasons (a page of them, by
    target id: pass ``next_failures_after_id`` as ``failures_after_id`` for the next)."""
    return bulk.get(
        job_id, who.account_id, failures_after_id=failures_after_id, limit=failures_limit
    ).model_dump(mode="json")


@router.post(JOB + "/pause", response_model=BulkJobOut, responses=CONTROL)
def pause_job(job_id: Id, who: Caller) -> Any:
    """Stop after the chunks in flight; ``resume`` goes on."""
    return bulk.pause(job_id, who.account_id).model_dump(mode="json")


@router.post(JOB + "/resume", response_model=BulkJobOut, responses=CONTROL)
def resume_job(job_id: Id, who: Caller) -> Any:
    return bulk.resume(job_id, who.account_id, get_settings(), publish.bulk_chunk).model_dump(
        mode="json"
    )


@router.post(JOB + "/cancel", response_model=BulkJobOut, responses=CONTROL)
def cancel_job(job_id: Id, who: Caller) -> Any:
    """End the job: done items stay done; pending ones are not done."""
    return bulk.cancel(job_id, who.account_id).model_dump(mode="json")


@router.post(JOB + "/retry-failed", response_model=BulkJobOut, responses=CONTROL)
def retry_failed(job_id: Id, who: Caller) -> Any:
    """Run the failed items again (only them), as new changes."""
    return bulk.retry_failed(job_id, who.account_id, get_settings(), publish.bulk_chunk).model_dump(
        mode="json"
    )
